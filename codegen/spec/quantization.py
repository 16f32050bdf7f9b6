"""Weight quantization schemes as data: specs/quantization/schemes.yaml → validated Scheme objects.

The file is read like a model spec (codegen.spec.document: line numbers, duplicate keys, limits),
checked against specs/quantization/schema.json, then semantically (group_size against the packing,
the name against bits and dtype). Every problem is one SpecError naming the file, line and key path.
The quantizer itself is codegen.convert.quantize. Nothing here imports TVM.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

from codegen import paths
from codegen.errors import CodegenError
from codegen.spec.document import Located, brief, load_document
from codegen.spec.schema import check_schema

ROLES = ("embedding", "lm_head")
# Model dtypes; each has an unquantized scheme (`--dtype float16` means q0f16).
DTYPES = ("float32", "float16", "bfloat16")
_WORD_BITS = {"uint32": 32}
_NAME_DTYPES = {"f16": "float16", "f32": "float32", "bf16": "bfloat16"}
_NAME = re.compile(r"q(?P<bits>[0-9]+)(?P<dtype>f16|f32|bf16)(_[0-9]+)?")


class UnknownScheme(CodegenError):
    """A scheme name that specs/quantization/schemes.yaml does not define."""


@dataclasses.dataclass(frozen=True)
class Scheme:
    name: str  # e.g. "q4f16_1"
    kind: str  # "none" (weights stored in model_dtype) or "group"
    model_dtype: str  # compute / activation dtype: "float32" | "float16" | "bfloat16"
    bits: int | None  # group: 4 or 8
    group_size: int | None  # group: elements per scale along K (the input dim)
    storage: str | None  # group: "uint32" (codes packed along K, 32 // bits per word)
    scale_dtype: str | None  # group: dtype of q_scale
    keep: frozenset[str]  # roles stored unquantized in model_dtype, a subset of ROLES
    description: str
    cpu_activations: str = "float"  # group: "int8" lets CPU matmuls quantize activations (build/cpu/int8_dot.py)

    @property
    def quantized(self) -> bool:
        return self.kind == "group"

    @property
    def codes_per_word(self) -> int:
        return _WORD_BITS[self._storage()] // self._bits()

    @property
    def max_code(self) -> int:
        """7 for int4, 127 for int8: a code c stands for (c - max_code) * scale, c in 0 .. 2 * max_code."""
        return 2 ** (self._bits() - 1) - 1

    def _bits(self) -> int:
        if self.bits is None:
            raise ValueError(f"scheme {self.name} stores its weights unquantized: it has no codes")
        return self.bits

    def _storage(self) -> str:
        if self.storage is None:
            raise ValueError(f"scheme {self.name} stores its weights unquantized: it has no storage words")
        return self.storage


def schemes_path() -> Path:
    return paths.specs_dir() / "quantization" / "schemes.yaml"


def load_schemes(path: Path | None = None) -> dict[str, Scheme]:
    """Every scheme of the file (the checkout's schemes.yaml by default), by name."""
    path = Path(path) if path is not None else schemes_path()
    document = load_document(path)
    check_schema(document, _schema_path())
    schemes = {}
    for name, entry in document.data["schemes"].items():
        schemes[name] = Scheme(
            name=name,
            kind=entry["kind"],
            model_dtype=entry["model_dtype"],
            bits=entry.get("bits"),
            group_size=entry.get("group_size"),
            storage=entry.get("storage"),
            scale_dtype=entry.get("scale_dtype"),
            keep=frozenset(entry.get("keep", ())),
            description=entry["description"],
            cpu_activations=entry.get("cpu_activations", "float"),
        )
        _check_semantics(document, schemes[name])
    return schemes


def scheme(name: str) -> Scheme:
    """The shipped scheme called name; UnknownScheme lists the known ones."""
    schemes = _shipped()
    if name not in schemes:
        raise UnknownScheme(f"unknown quantization scheme {brief(name)}; known schemes: {', '.join(sorted(schemes))}")
    return schemes[name]


@functools.lru_cache(maxsize=1)
def _shipped() -> dict[str, Scheme]:
    return load_schemes()


def _schema_path() -> Path:
    return paths.specs_dir() / "quantization" / "schema.json"


def _check_semantics(document: Located, s: Scheme) -> None:
    where = ("schemes", s.name)
    match = _NAME.fullmatch(s.name)
    assert match is not None  # the schema's propertyNames pattern
    name_bits, name_dtype = int(match["bits"]), _NAME_DTYPES[match["dtype"]]
    if name_bits != (s.bits or 0):
        wanted = f"bits {s.bits}" if s.quantized else "kind none"
        raise document.error(where, f"the name says {name_bits} bits, but the scheme has {wanted}")
    if name_dtype != s.model_dtype:
        raise document.error(where, f"the name says {name_dtype}, but model_dtype is {s.model_dtype}")
    if s.quantized and s.group_size % s.codes_per_word:
        raise document.error(
            where + ("group_size",),
            f"group_size {s.group_size} must be a multiple of {s.codes_per_word}, the {s.bits}-bit codes per {s.storage} word",
        )


def resolve(name: str | None, dtype: str | None = None) -> Scheme:
    """The scheme a build or a conversion uses: by name, or the unquantized one of dtype, or q0f32.

    Both may be given when they agree (q4f16_1 with float16)."""
    if dtype is not None and dtype not in DTYPES:
        raise UnknownScheme(f"unknown dtype {brief(dtype)}; choose one of: {', '.join(DTYPES)}")
    if name is None:
        dtype = dtype or "float32"
        return next(s for s in _shipped().values() if not s.quantized and s.model_dtype == dtype)
    chosen = scheme(name)
    if dtype is not None and dtype != chosen.model_dtype:
        raise UnknownScheme(f"quantization {chosen.name} computes in {chosen.model_dtype}, not --dtype {dtype}; give one of the two")
    return chosen
