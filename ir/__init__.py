"""lpuc's IR: types, values, ops, blocks, modules, the op registry, the text
form (grammar, printer, parser), the verifier and the reference evaluator."""

from . import graph_ops, machine_ops  # noqa: F401  (register the graph and machine dialects)
from .attributes import AttrDict, Tensor
from .core import Block, Module, Op, Piece, Value
from .errors import EvalError, LpucError, ParseError, VerifyError
from .parser import parse, parse_file
from .printer import print_module
from .registry import OPS, AttrSpec, OpDef
from .types import DType, TensorType

__all__ = [
    "AttrDict", "AttrSpec", "Block", "DType", "EvalError", "LpucError", "Module", "OPS", "Op", "OpDef",
    "ParseError", "Piece", "Tensor", "TensorType", "Value", "VerifyError", "parse", "parse_file", "print_module",
]
