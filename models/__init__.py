"""Model runtime (torch-free) and the offline model build (export, quantize, verify).

Importing this package, or `encoder`/`cross_encoder`/`manifest`, never imports torch,
transformers or optimum: those are needed only by `export`, `build` and `training`.
"""
