"""Online serving of the teacher and student recommenders (no torch, no training imports)."""
