"""Inference workloads in onnxruntime, for comparison only (onnx, onnxruntime optional).

The graph is the model's own export (``model.to_onnx``) of the workload's start
weights; one InferenceSession on the CPU with ``intra_op_num_threads`` = the
run's thread count and one inter-op thread.
"""
from __future__ import annotations

import os
import tempfile

from numpy_case import Inputs
from workloads import make_data

THREADS = [2]   # report.py sets it from --threads before building cases


def available():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxCase:
    """A predict workload in onnxruntime: ``run()`` does one timed call."""

    def __init__(self, w):
        import onnxruntime as ort

        if w.kind != "predict":
            raise ValueError("onnxruntime runs inference rows only")
        self.workload = w
        model = w.model("numpy")
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS[0]
        options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{w.name}.onnx")
            model.to_onnx(path)
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        X = make_data(w)[0]
        self.feed = {self.input: X}
        self.run = self.predict
        if w.data == "float64":  # the graph takes float32: cast per call into one buffer
            inputs = Inputs(*X.shape)
            self.run = lambda: self.session.run(None, {self.input: inputs(X)})[0]

    def predict(self):
        """One run (a scaled model's graph standardises X itself: to_onnx's Sub and Div)."""
        return self.session.run(None, self.feed)[0]
