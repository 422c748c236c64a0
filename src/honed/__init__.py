"""honed: turn a general pretrained model into a specialist and keep it healthy in production.

Sub-packages follow the lifecycle: ``data``, ``models``, ``train``, ``evals``, ``registry``,
``serve``, ``monitor``, ``pipeline``, ``security``. Importing ``honed`` is cheap; heavy libraries
(torch, transformers, peft, mlflow) are imported where they are used.
"""

__version__ = "0.1.0"
