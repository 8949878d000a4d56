"""NanoPrime's language model: config, layers, the model, its inference state and model-directory I/O.

Import from the submodules (`model.config`, `model.nanoprime`, `model.state`, `model.checkpoint`, …) so that
reading a config does not pull in torch.
"""
