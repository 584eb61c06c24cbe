"""FLOPs and bytes of each instruction of a compiled XLA program, read from
its optimized HLO text (``jax.stages.Compiled.as_text()``): for
benchmarks/op_profile.py's table, and :func:`program_flops`, the model
FLOPs of one call that the training log's TFLOP/s and MFU are made of.

FLOPs count the multiply-adds of convolutions and dots (2 per
multiply-add), also inside fusions and as library calls (cuDNN
convolutions, cuBLAS gemms); elementwise work is not counted. Bytes are an
instruction's operands plus its result, as the program passes them: what
one call reads and writes at least.
"""

from __future__ import annotations

import json
import math
import re
from typing import Dict, List, NamedTuple, Optional, Tuple

_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2,
          "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*[({]")


class Cost(NamedTuple):
  """One instruction: its kind, FLOPs and bytes per call."""
  kind: str
  flops: float
  bytes: float


def _shapes(text: str) -> List[Tuple[str, Tuple[int, ...]]]:
  return [(t, tuple(int(d) for d in dims.split(",") if d))
          for t, dims in _SHAPE.findall(text)]


def _size(shape: Tuple[str, Tuple[int, ...]]) -> float:
  kind, dims = shape
  return _BYTES.get(kind, 1) * math.prod(dims)


def _split_result(rhs: str) -> Tuple[str, str, str]:
  """(result type text, opcode, the rest) of an instruction's right side."""
  depth = 0
  for i, ch in enumerate(rhs):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == " " and depth == 0:
      result, rest = rhs[:i], rhs[i + 1:]
      m = re.match(r"([\w\-$]+)\((.*)$", rest)
      if m:
        return result, m.group(1), m.group(2)
  return rhs, "", ""


def _operands(rest: str) -> str:
  """The operand list of ``opcode(operands), attributes``."""
  depth = 1
  for i, ch in enumerate(rest):
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth == 0:
        return rest[:i]
  return rest


def _conv_flops(result: str, ins: List, attrs: str) -> float:
  out = _shapes(result)
  labels = re.search(r"dim_labels=\w+_(\w+)->", attrs)
  if not out or len(ins) < 2 or not labels:
    return 0.0
  kernel = ins[1][1]
  o = labels.group(1).find("o")
  if o < 0 or o >= len(kernel) or not kernel[o]:
    return 0.0
  return 2.0 * math.prod(out[0][1]) * math.prod(kernel) / kernel[o]


def _dot_flops(result: str, ins: List, attrs: str) -> float:
  out = _shapes(result)
  m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
  dims = [int(d) for d in m.group(1).split(",") if d] if m else None
  if dims is None:  # a cuBLAS call: the dimensions in its backend config
    m = re.search(r'"lhs_contracting_dimensions":\s*\[([^\]]*)\]', attrs)
    dims = [int(d) for d in json.loads(f"[{m.group(1)}]")] if m else None
  if not out or not ins or dims is None:
    return 0.0
  lhs = ins[0][1]
  return 2.0 * math.prod(out[0][1]) * math.prod(lhs[d] for d in dims)


def _operand_names(operands: str) -> List[str]:
  """The instruction names in an operand list ('%a, %b' or 'f32[2] a')."""
  names, depth, start = [], 0, 0
  for i, ch in enumerate(operands + ","):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      words = operands[start:i].split()
      if words:
        names.append(words[-1].lstrip("%"))
      start = i + 1
  return names


def _own_flops(opcode: str, result: str, ins: List, attrs: str) -> float:
  if opcode == "convolution":
    return _conv_flops(result, ins, attrs)
  if opcode == "dot":
    return _dot_flops(result, ins, attrs)
  if opcode == "custom-call":
    target = re.search(r'custom_call_target="([^"]+)"', attrs)
    target = target.group(1) if target else ""
    if "conv" in target.lower():
      return _conv_flops(result, ins, attrs)
    if "gemm" in target.lower() or "matmul" in target.lower():
      return _dot_flops(result, ins, attrs)
  return 0.0


def _parse(hlo_text: str):
  """({instruction: (computation, opcode, result, rest)}, {computation:
  [instruction, ...]}, the entry computation's name)."""
  parsed = {}  # name -> (computation, opcode, result, rest)
  comp_of = {}
  computation, entry = "", ""
  for line in hlo_text.splitlines():
    if not line.startswith(" ") and "{" in line and "=" not in line.split(
        "{")[0].split("(")[0]:
      m = _COMP.match(line)
      if m:
        computation = m.group(1)
        if line.startswith("ENTRY"):
          entry = computation
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, rhs = m.groups()
    result, opcode, rest = _split_result(rhs)
    if not opcode:
      continue
    parsed[name] = (computation, opcode, result, rest)
    comp_of.setdefault(computation, []).append(name)
  return parsed, comp_of, entry


def _operand_shapes(parsed, rest: str) -> List:
  """The shapes of an instruction's operands: written inline, or those of
  the instructions it names."""
  operands = _operands(rest)
  inline = _shapes(operands)
  if inline:
    return inline
  return [_shapes(parsed[n][2])[0] for n in _operand_names(operands)
          if n in parsed and _shapes(parsed[n][2])]


# The opcodes :func:`_own_flops` counts; every other instruction has none.
_FLOP_OPCODES = frozenset(("convolution", "dot", "custom-call"))


def _own_flops_of(parsed, ins_of: Optional[Dict[str, List]] = None
                  ) -> Dict[str, float]:
  """{instruction: its own FLOPs} (a convolution's or a dot's), from its
  operands' shapes ``ins_of`` (found here where not given)."""
  own = {}
  for n, (_, op, res, rest) in parsed.items():
    if op not in _FLOP_OPCODES:
      own[n] = 0.0
      continue
    ins = ins_of[n] if ins_of is not None else _operand_shapes(parsed, rest)
    own[n] = _own_flops(op, res, ins, rest[len(_operands(rest)):])
  return own


def program_flops(hlo_text: str) -> float:
  """The FLOPs of one call of a compiled program: its convolutions' and
  dots' (2 per multiply-add, as :func:`instruction_costs` counts them),
  wherever they sit: in fusions and calls, in a loop's body times its
  trip count where XLA knows it (a ``lax.scan``), once where it does not
  (a ``fori_loop`` over a traced count), in the costliest branch of a
  conditional. Elementwise work is not counted: these are the model FLOPs
  that MFU is defined over. For a program partitioned over devices, the
  FLOPs of one device's part."""
  parsed, comp_of, entry = _parse(hlo_text)
  own = _own_flops_of(parsed)
  memo: Dict[str, float] = {}

  def flops(comp: str, seen: Tuple[str, ...] = ()) -> float:
    if comp in memo:
      return memo[comp]
    if comp in seen:
      return 0.0
    total = 0.0
    for n in comp_of.get(comp, []):
      _, op, _, rest = parsed[n]
      total += own[n]
      inner = seen + (comp,)
      if op == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest)
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        if body:
          total += flops(body.group(1), inner) * (
              int(trips.group(1)) if trips else 1)
      elif op == "conditional":
        branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
        names = re.findall(r"%?([\w.\-]+)", branches.group(1)) if (
            branches) else re.findall(
                r"(?:true|false)_computation=%?([\w.\-]+)", rest)
        total += max((flops(b, inner) for b in names), default=0.0)
      else:
        for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest):
          total += flops(callee, inner)
    memo[comp] = total
    return total

  return flops(entry)


def instruction_costs(hlo_text: str) -> Dict[str, Cost]:
  """{instruction name: :class:`Cost`} for every instruction of every
  computation; a fusion's FLOPs are those of the instructions it calls."""
  parsed, comp_of, _ = _parse(hlo_text)
  ins_of = {n: _operand_shapes(parsed, rest)
            for n, (_, _, _, rest) in parsed.items()}
  own = _own_flops_of(parsed, ins_of)

  def called_flops(comp, seen=()):
    total = 0.0
    for n in comp_of.get(comp, []):
      _, op, _, rest = parsed[n]
      total += own[n]
      if op == "fusion" and comp not in seen:
        for callee in re.findall(r"calls=%?([\w.\-]+)", rest):
          total += called_flops(callee, seen + (comp,))
    return total

  costs = {}
  for name, (_, opcode, result, rest) in parsed.items():
    flops = own[name]
    kind = opcode
    if opcode == "fusion":
      fusion_kind = re.search(r"kind=(\w+)", rest)
      kind = f"fusion:{fusion_kind.group(1)}" if fusion_kind else "fusion"
      for callee in re.findall(r"calls=%?([\w.\-]+)", rest):
        flops += called_flops(callee)
    elif opcode == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', rest)
      kind = target.group(1) if target else opcode
    out = _shapes(result)
    if opcode == "custom-call" and out and out[-1][0] == "u8":
      out = out[:-1]  # a library call's scratch buffer
    nbytes = sum(_size(s) for s in out) + sum(_size(s) for s in
                                              ins_of[name])
    costs[name] = Cost(kind, flops, nbytes)
  return costs
