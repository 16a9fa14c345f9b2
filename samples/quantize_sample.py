"""Make the QDQ-quantized sample `bert_prefill_qdq` from `bert_prefill` with onnxruntime's quantization tools.

    python samples/quantize_sample.py

`onnxruntime.quantization.quantize_static` in QDQ format: every MatMul / Gemm weight int8, symmetric per
output channel; activations int8, symmetric per tensor (QuantizeLinear / DequantizeLinear pairs), calibrated
(MinMax) on the sample's own inputs. Writes `quantized/bert_prefill_qdq.onnx`, `.inputs.npz` (bert_prefill's
inputs)
and `.outputs.npz` (onnxruntime's outputs on them, CPUExecutionProvider). It lives apart from the float
samples (`samples/*.onnx`), which every sample test and golden record covers. lpuc imports each matmul between
QDQ pairs as an int8 matmul with int32 sums (compiler/frontend/converters.py, "quantized models").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

HERE = Path(__file__).resolve().parent
SOURCE, NAME, OUT = "bert_prefill", "bert_prefill_qdq", HERE / "quantized"


class _Inputs(CalibrationDataReader):
    def __init__(self, inputs: dict):
        self.left = [inputs]

    def get_next(self):
        return self.left.pop() if self.left else None


def main() -> None:
    inputs = dict(np.load(HERE / f"{SOURCE}.inputs.npz"))
    out = OUT / f"{NAME}.onnx"
    with tempfile.TemporaryDirectory() as tmp:  # the quantizer writes its calibration model beside its output
        staged = Path(tmp) / out.name
        quantize_static(str(HERE / f"{SOURCE}.onnx"), str(staged), _Inputs(inputs), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True,
                                                                        "WeightSymmetric": True})
        model = onnx.load(staged)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    np.savez(OUT / f"{NAME}.inputs.npz", **inputs)
    np.savez(OUT / f"{NAME}.outputs.npz", **outputs)
    ops = sorted({n.op_type for n in model.graph.node if n.op_type.endswith("QuantizeLinear")})
    print(f"wrote {out.name} ({out.stat().st_size:,} bytes; {', '.join(ops)}) and its inputs and outputs")


if __name__ == "__main__":
    main()
