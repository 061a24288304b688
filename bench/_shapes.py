"""Bundles with the real model shapes but little training, for benchmarks of memory and
latency: those depend on the graphs' shapes and the catalogue, not on the weights."""

from __future__ import annotations

from dataclasses import replace

from training.pipeline import PipelineConfig
from training.train import TeacherConfig


class ShapeConfig(PipelineConfig):
    """Full teacher shapes with one epoch per component and no refit; quick student
    training (which still starts at the teacher's size and prunes to its ratio)."""

    def teacher_config(self) -> TeacherConfig:
        full = TeacherConfig(
            seed=self.seed, threads=self.threads, progress=self.progress, jobs=self.jobs
        )
        return replace(
            full,
            mf=replace(full.mf, epochs=1),
            xdeepfm=replace(full.xdeepfm, epochs=1),
            autoint=replace(full.autoint, epochs=1),
            refit_full=False,
        )
