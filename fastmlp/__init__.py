"""fastmlp: fast multilayer perceptrons on the CPU.

>>> import fastmlp as fm
>>> model = fm.Model([fm.Dense(4, activation="sigmoid"), fm.Dense(2, activation="sigmoid")],
...                  input_dim=3, loss="mse", optimizer=fm.SGD(lr=0.5), seed=0)
"""
from .backends import keep_out_kernels_elsewhere

keep_out_kernels_elsewhere()   # before any module imports the kernels
from . import callbacks  # noqa: E402, F401  (fm.callbacks, as in Keras)
from .backends import available_backends  # noqa: E402
from .callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar  # noqa: E402
from .model import History, Model, TrainingDiverged, load  # noqa: E402
from .network import Dense  # noqa: E402
from .optimizers import SGD, Adam  # noqa: E402
from .threads import blas_in_use, set_gemm_loops, set_num_threads, thread_info  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Model", "Dense", "SGD", "Adam", "History", "TrainingDiverged", "load",
           "Callback", "EarlyStopping", "ModelCheckpoint", "ProgressBar",
           "available_backends", "set_gemm_loops", "set_num_threads", "thread_info",
           "blas_in_use", "__version__"]
