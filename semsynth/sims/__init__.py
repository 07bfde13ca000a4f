"""SIMS: semi-parametric image synthesis (Qi, Chen, Jia & Koltun, CVPR 2018).

Non-parametric side (this package):

* `segments`  — cutting a layout into segments (connected components with thin structures merged)
* `bank`      — the memory bank of training segments: `build_bank`, `Bank`
* `retrieval` — top-k bank segments per query segment, by mask IoU or context-aware IoU
* `order`     — the class-order prior (back to front) from co-occurrence statistics
* `canvas`    — composing retrieved segments into the canvas the synthesis network refines
* `color_transfer` — MKL colour transfer (Pitie et al.) used for training canvases

Parametric side: `semsynth.models.sims` (networks), `semsynth.tasks.sims` (training),
`semsynth.sims.pipeline` (layout -> photo).
"""
