"""The bundle contract shared by `training/` (which writes bundles) and `app/` (which serves them).

Torch-free by design: the service imports it, and both sides must agree by construction, so
every rule lives here once. Modules by concern:

- `errors`     BundleError, ModelLoadError
- `features`   the feature map and its encoding rules (FieldSpec, FeatureMap)
- `ids`        the rules raw ids share (a length limit, no control characters)
- `ratings`    the rating scale and its clip
- `layout`     the bundle's file names and sha256_file
- `manifest`   the manifest schema (pydantic) and read_manifest
- `tables`     the data files (features.npz, seen.npz, id maps, items, popular) and their shapes
- `signature`  ONNX input/output names, dtypes and which inputs a graph may drop
- `session`    ONNX Runtime session set-up and signature check
- `verify`     verify_bundle: everything above checked against one bundle folder
"""
