"""ONNX -> graph IR.

The driver: load the model (weights stay on disk), check opsets and op support
(all problems at once), validate the graph with onnx's checker, run onnx's
strict shape inference with data propagation, then convert node by node
through the converter table in converters.py. Nodes whose inputs are all small
compile-time constants (Shape / Gather / Concat / Range chains, mask
arithmetic) are folded by running their conversion through the reference
evaluator, so graphs with symbolic dims become static once the inputs are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from onnx import numpy_helper

from ...ir import DType, LpucError, Module, Tensor, TensorType, Value
from ...ir.builder import Builder
from ...ir.evaluator import evaluate
from ...ir.files import read_bytes

from ..passes import dead_code_elimination

from .converters import CONVERTERS, DATA_DEPENDENT, Node

OPSETS = range(17, 26)  # default-domain opsets we accept
FOLD_LIMIT = 1 << 16  # fold a node when its constant inputs hold at most this many elements

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: DType.f32, onnx.TensorProto.DOUBLE: DType.f64, onnx.TensorProto.FLOAT16: DType.f16,
    onnx.TensorProto.BFLOAT16: DType.bf16, onnx.TensorProto.INT8: DType.i8, onnx.TensorProto.INT16: DType.i16,
    onnx.TensorProto.INT32: DType.i32, onnx.TensorProto.INT64: DType.i64, onnx.TensorProto.UINT8: DType.u8,
    onnx.TensorProto.UINT16: DType.u16, onnx.TensorProto.UINT32: DType.u32, onnx.TensorProto.UINT64: DType.u64,
    onnx.TensorProto.BOOL: DType.bool,
    onnx.TensorProto.FLOAT8E4M3FN: DType.f8e4m3fn, onnx.TensorProto.FLOAT8E4M3FNUZ: DType.f8e4m3fnuz,
    onnx.TensorProto.FLOAT8E5M2: DType.f8e5m2, onnx.TensorProto.FLOAT8E5M2FNUZ: DType.f8e5m2fnuz,
    onnx.TensorProto.FLOAT8E8M0: DType.f8e8m0, onnx.TensorProto.FLOAT4E2M1: DType.f4e2m1,
    onnx.TensorProto.INT4: DType.i4, onnx.TensorProto.UINT4: DType.u4,
    onnx.TensorProto.INT2: DType.i2, onnx.TensorProto.UINT2: DType.u2,
}
# Bits per element where ONNX packs several elements in a byte (lpuc stores one per byte).
PACKED_BITS = {DType.f4e2m1: 4, DType.i4: 4, DType.u4: 4, DType.i2: 2, DType.u2: 2}

STATIC_ADVICE = ("static scheduling needs static shapes: export with a fixed batch and sequence length "
                 "(no dynamic axes); for Mixtral, use transformers' `batched_mm` experts implementation")


def onnx_dtype(elem_type: int, what: str) -> DType:
    try:
        return ONNX_DTYPES[elem_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() \
            else str(elem_type)
        raise LpucError(f"{what}: element type {name} is not supported") from None


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file without loading external weights."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise LpucError(f"{path}: no such file") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise LpucError(f"{path}: not a valid ONNX model ({type(e).__name__})") from None
    _check_strings(model, path)
    if not model.graph.output:
        raise LpucError(f"{path}: not a valid ONNX model (its graph has no outputs)")
    return model


def _check_strings(message, path: Path) -> None:
    """ONNX's protobuf is proto2, whose parser does not check that strings are UTF-8: a corrupt
    one reads back as bytes, which no name lookup or message expects. Tensor data (bytes fields)
    is not read."""
    for f in message.DESCRIPTOR.fields:
        if f.type == f.TYPE_STRING:
            value = getattr(message, f.name)
            for text in value if f.is_repeated else (value,):
                if not isinstance(text, str):
                    raise LpucError(f"{path}: not a valid ONNX model ({message.DESCRIPTOR.name}.{f.name} "
                                    f"{bytes(text[:40])!r} is not UTF-8)")
        elif f.type == f.TYPE_MESSAGE and (f.is_repeated or message.HasField(f.name)):
            value = getattr(message, f.name)
            for m in value if f.is_repeated else (value,):
                _check_strings(m, path)


@dataclass(frozen=True)
class SupportReport:
    """Which of the model's nodes lpuc can compile."""

    total: int
    unsupported: dict[str, list[str]] = field(default_factory=dict)  # op type -> node names

    @property
    def supported(self) -> int:
        return self.total - sum(len(v) for v in self.unsupported.values())

    def summary(self) -> str:
        line = f"{self.supported}/{self.total} nodes supported"
        if self.unsupported:
            parts = []
            for op_type, names in sorted(self.unsupported.items()):
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                parts.append(f"{op_type} x{len(names)} ({shown})")
            line += "; unsupported: " + "; ".join(parts)
        return line


def _opset(model: onnx.ModelProto) -> int:
    versions = {o.domain: o.version for o in model.opset_import}
    return versions.get("", versions.get("ai.onnx", 0))


def support_report(model: onnx.ModelProto) -> SupportReport:
    unsupported: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if key not in CONVERTERS or key in DATA_DEPENDENT:
            unsupported.setdefault(key, []).append(node.name or f"#{i}")
    return SupportReport(len(model.graph.node), unsupported)


def _check_model(model: onnx.ModelProto, report: SupportReport) -> None:
    opset = _opset(model)
    if opset not in OPSETS:
        raise LpucError(f"model uses ONNX opset {opset}; lpuc supports opsets {OPSETS.start}-{OPSETS.stop - 1}")
    dynamic = sorted(set(report.unsupported) & DATA_DEPENDENT)
    if dynamic:
        raise LpucError(f"{', '.join(dynamic)} produces data-dependent shapes; {STATIC_ADVICE}")
    if report.unsupported:
        raise LpucError(report.summary())


def _fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    inits = {t.name for t in model.graph.initializer}
    known = {i.name for i in model.graph.input}
    for name in shapes:
        if name not in known:
            raise LpucError(f"no graph input named {name!r} (inputs: {', '.join(sorted(known - inits))})")
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            want = shapes[inp.name]
            if len(dims) != len(want):
                raise LpucError(f"input {inp.name}: rank {len(want)} given, the model has rank {len(dims)}")
            for d, n in zip(dims, want):
                if d.HasField("dim_value") and d.dim_value != n:
                    raise LpucError(f"input {inp.name}: shape {list(want)} given, the model fixes "
                                    f"{[x.dim_value if x.HasField('dim_value') else x.dim_param for x in dims]}")
                d.Clear()
                d.dim_value = n


def _static_type(vi: onnx.ValueInfoProto, what: str) -> TensorType:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise LpucError(f"{what} {vi.name} is not a tensor (sequences and maps are not supported)")
    dims = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            raise LpucError(f"{what} {vi.name} has a dynamic dimension {d.dim_param or '?'!r}; {STATIC_ADVICE} "
                            "(or fix the input's shape: --shape NAME=D0,D1,...)")
        dims.append(d.dim_value)
    return TensorType(tuple(dims), onnx_dtype(tt.elem_type, f"{what} {vi.name}"))


def _weight(init: onnx.TensorProto, base_dir: Path) -> Tensor:
    """A lazy constant for an initializer; external data is never read here."""
    dtype = onnx_dtype(init.data_type, f"initializer {init.name}")
    if any(d < 0 for d in init.dims):  # (onnx.checker lets a large or external initializer's dims pass)
        raise LpucError(f"initializer {init.name}: negative dimension in its shape {list(init.dims)}")
    ttype = TensorType(tuple(init.dims), dtype)
    if init.data_location == onnx.TensorProto.EXTERNAL:
        nbytes = onnx_nbytes(ttype)
        location, path, offset = _external_data(init, base_dir, nbytes)
        key = f"ext:{location}:{offset}:{nbytes}"

        def load(init=init, dtype=dtype, ttype=ttype, path=path):
            try:
                raw = read_bytes(path, offset=offset, size=nbytes)
            except LpucError as e:
                raise LpucError(f"weights of {init.name}: {e}") from None
            return _decode(raw, init.data_type, dtype, ttype.shape)

        return Tensor(ttype, key, loader=load)
    try:
        return Tensor.from_array(_to_numpy(init, dtype), dtype)
    except ValueError as e:  # the checker sees small initializers only (_check_and_infer)
        raise LpucError(f"initializer {init.name}: its data does not match its shape {list(init.dims)} ({e})") from None


def _external_data(init: onnx.TensorProto, base_dir: Path, nbytes: int) -> tuple[str, Path, int]:
    """(location, file, offset) of an initializer's external data of `nbytes`, its file checked
    by `_external_file`."""
    location, path = _external_file(init, base_dir)
    info = {e.key: e.value for e in init.external_data}
    where = f"initializer {init.name}: external data"
    offset, length = info.get("offset", "0"), info.get("length", str(nbytes))
    if not (offset.isascii() and offset.isdigit() and int(offset) < 1 << 63):  # a file offset has 63 bits
        raise LpucError(f"{where} offset {offset!r} is not a byte offset")
    if not (length.isascii() and length.isdigit() and int(length) == nbytes):
        raise LpucError(f"{where} length {length!r} is not the tensor's {nbytes} bytes")
    return location, path, int(offset)


def _external_file(init: onnx.TensorProto, base_dir: Path) -> tuple[str, Path]:
    """(location, file) of an initializer's external data. The file must be inside the model's
    directory, as ONNX specifies: a location that is absolute, has a `..` or resolves (through
    symlinks) outside the directory is refused before anything is opened."""
    location = next((e.value for e in init.external_data if e.key == "location"), "")
    where = f"initializer {init.name}: external data"
    if not location:
        raise LpucError(f"{where} has no location")
    relative = PurePosixPath(location)  # ONNX: a POSIX path relative to the model's directory
    if relative.is_absolute() or ".." in relative.parts:
        raise LpucError(f"{where} location {location!r} must be a path inside the model's directory "
                        "(relative, without '..')")
    directory = base_dir.resolve()
    path = (directory / location).resolve()
    if not path.is_relative_to(directory):
        raise LpucError(f"{where} location {location!r} leads outside the model's directory (to {path})")
    return location, path


def external_files(proto: onnx.ModelProto, base_dir: Path) -> dict[str, Path]:
    """The files a model's initializers keep their data in, by location (each checked as
    `_external_file` checks it)."""
    return dict(_external_file(init, base_dir) for init in proto.graph.initializer
                if init.data_location == onnx.TensorProto.EXTERNAL)


def onnx_nbytes(ttype: TensorType) -> int:
    """The bytes of a tensor's data in ONNX (raw_data, external data): sub-byte types packed."""
    bits = PACKED_BITS.get(ttype.dtype)
    return ttype.nbytes if bits is None else -(-ttype.numel * bits // 8)


def _decode(raw: bytes, data_type: int, dtype: DType, shape) -> np.ndarray:
    if dtype in PACKED_BITS:  # numpy_helper unpacks them
        t = onnx.TensorProto(data_type=data_type, dims=shape, raw_data=raw)
        return numpy_helper.to_array(t).astype(dtype.numpy)
    if dtype is DType.bf16:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=dtype.numpy.newbyteorder("<")).astype(dtype.numpy).reshape(shape)


def _to_numpy(t: onnx.TensorProto, dtype: DType) -> np.ndarray:
    a = numpy_helper.to_array(t)
    return a.astype(np.float32) if dtype is DType.bf16 else a.astype(dtype.numpy)


class _Importer:
    def __init__(self, model: onnx.ModelProto, base_dir: Path):
        self.model = model
        self.opset = _opset(model)
        self.b = Builder()
        self.consts: dict[str, Tensor] = {}  # ONNX name -> compile-time constant
        self.values: dict[str, Value] = {}  # ONNX name -> IR value
        self.inferred: dict[str, onnx.ValueInfoProto] = {}
        self.dequantized: dict[str, object] = {}  # DequantizeLinear output -> its parts (converters.Dequantized)
        g = model.graph
        for vi in list(g.value_info) + list(g.output):
            self.inferred[vi.name] = vi
        for init in g.initializer:
            self.consts[init.name] = _weight(init, base_dir)

    def value(self, name: str) -> Value:
        """The IR value of an ONNX tensor, materializing a constant on first use."""
        v = self.values.get(name)
        if v is None:
            v = self.values[name] = self.b.constant(self.consts[name], name=name)
        return v

    def const(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else t.array

    def run(self, name: str) -> Module:
        g = self.model.graph
        for inp in g.input:
            if inp.name not in self.consts:
                self.values[inp.name] = self.b.input(inp.name, _static_type(inp, "input"))
        for node in g.node:
            self.convert(node)
        for out in g.output:
            if out.name not in self.values and out.name not in self.consts:
                raise LpucError(f"graph output {out.name} is never computed")
            self.b.output(out.name, self.value(out.name))
        return dead_code_elimination(self.b.build(name))

    def foldable(self, node: onnx.NodeProto) -> bool:
        names = [n for n in node.input if n]
        # A DequantizeLinear of quantized weights stays: its integers are what the model stores and multiplies.
        return bool(names) and node.op_type != "DequantizeLinear" and all(n in self.consts and self.consts[n].has_data
                                   and not self.consts[n].key.startswith("ext:")
                                   and self.consts[n].type.numel <= FOLD_LIMIT for n in names)

    def convert(self, node: onnx.NodeProto) -> None:
        label = f"{node.op_type} node {node.name or '(unnamed)'}"
        if self.foldable(node) or (node.op_type == "Constant"):
            outs = self._fold(node, label)
            for name, t in zip(node.output, outs):
                if name:
                    self.consts[name] = t
            return
        first = len(self.b.ops)
        results = self._run_converter(node, label)
        # Constants a converter made (Shape, ConstantOfShape, ...) stay foldable downstream.
        made = {op.result.name: op.attrs["value"] for op in self.b.ops[first:] if op.name == "graph.constant"}
        for name, v in zip(node.output, results):
            if name and v is not None:
                self._check_type(name, v, label)
                self.values[name] = v
                if v.name in made:
                    self.consts[name] = made[v.name]

    def _run_converter(self, node: onnx.NodeProto, label: str) -> list[Value | None]:
        try:
            results = CONVERTERS[node.op_type](Node(node, self.b, self, self.opset))
        except LpucError as e:
            raise LpucError(f"{label}: {e}") from None
        return [results] if isinstance(results, Value) else list(results)

    def _fold(self, node: onnx.NodeProto, label: str) -> list[Tensor]:
        """Evaluate a node on constant inputs, through its converter and the reference evaluator."""
        scratch = _Importer.__new__(_Importer)
        scratch.model, scratch.opset, scratch.b = self.model, self.opset, Builder()
        scratch.consts, scratch.values, scratch.inferred, scratch.dequantized = self.consts, {}, self.inferred, {}
        results = scratch._run_converter(node, label)
        for i, v in enumerate(results):
            if v is not None:
                scratch.b.output(str(i), v)
        try:
            outputs = evaluate(scratch.b.build("fold"), {})
        except LpucError as e:  # e.g. a constant index outside its table: name the ONNX node
            raise LpucError(f"{label}: while folding constants: {e}") from None
        return [Tensor.from_array(outputs[str(i)], v.type.dtype) if v is not None else None
                for i, v in enumerate(results)]

    def _check_type(self, name: str, v: Value, label: str) -> None:
        vi = self.inferred.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if len(dims) != v.type.rank or any(d is not None and d != s for d, s in zip(dims, v.type.shape)):
            raise LpucError(f"{label}: lpuc computed {v.type} for {name}, ONNX shape inference says {dims}")


def _check_and_infer(model: onnx.ModelProto, path: Path) -> None:
    """Validate the graph once, with onnx's checker (every name defined before use, nodes in
    topological order, single assignment, attributes and input counts as the op's schema says),
    then onnx's strict shape inference with data propagation, its results put into `model`.

    Both run on a skeleton of the model whose large and external initializers are graph inputs of
    the same type: they need only the types of those (data propagation reads small integer
    tensors), the checker would look for external files relative to the working directory
    (`_weight` checks where external data lives), and the bytes of inline weights would be copied
    (2.5 s of a 4 s import for 230 MB)."""
    graph = model.graph
    skeleton = onnx.ModelProto(**_fields(model, but="graph"), graph=_fields(graph, but="initializer"))
    inputs = {i.name for i in graph.input}
    for init in graph.initializer:
        limit = 1 << 16 if init.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64) else 1 << 12
        if init.data_location != onnx.TensorProto.EXTERNAL and len(init.raw_data) <= limit:
            _weight(init, path.parent)  # its data fits its shape (onnx's checker says so from onnx 1.23 on only)
            skeleton.graph.initializer.append(init)
        elif init.name not in inputs:
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    try:
        onnx.checker.check_model(skeleton)
    except onnx.checker.ValidationError as e:
        raise LpucError(f"{path}: not a valid ONNX model: {_one_line(e)}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)
    except Exception as e:
        raise LpucError(f"{path}: ONNX shape inference failed: {_one_line(e)}") from None
    for field_name in ("value_info", "output"):
        del getattr(graph, field_name)[:]
        getattr(graph, field_name).extend(getattr(inferred.graph, field_name))


def _fields(message, but: str) -> dict:
    """The fields set in a protobuf message, but one: to copy it without that one."""
    return {f.name: v for f, v in message.ListFields() if f.name != but}


def _one_line(e: Exception) -> str:
    """onnx's C++ messages span lines (a node printed in the middle): one line of them."""
    return " ".join(str(e).split()) or type(e).__name__


def import_onnx(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None,
                model: onnx.ModelProto | None = None) -> tuple[Module, SupportReport]:
    """Convert an ONNX file to a graph-level module. Raises LpucError with the
    support report when any node is unsupported."""
    path = Path(path)
    model = model if model is not None else load_onnx(path)
    report = support_report(model)
    _check_model(model, report)
    if input_shapes:
        _fix_input_shapes(model, input_shapes)
    _check_and_infer(model, path)
    # Named after the graph, not the file: the same model under any file name, or through a
    # symlink, gives the same module and the same .lpu bytes.
    module = _Importer(model, path.parent).run(model.graph.name)
    return module, report
