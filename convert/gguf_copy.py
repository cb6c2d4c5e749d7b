"""Rewrite a GGUF: its keys (exact bytes for strings) and tensors, with some replaced.

The ``gguf`` package reads every key with its type and writes keys and tensors;
this is the glue the merge (``export_gguf``) and the adapter copies of
``export_targets`` share. Tensors given as the reader's own arrays are written
byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from preflexor_local.errors import InvalidModelError


def copy_kv(reader, skip: set[str]) -> dict:
    """Every key of ``reader`` as (value, type, sub_type), strings as their exact bytes."""
    import gguf

    T = gguf.GGUFValueType
    out = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = f.types[0]
        if vtype == T.ARRAY:
            sub = f.types[-1]
            if len(f.types) > 2:
                raise InvalidModelError(f"cannot copy metadata key {key}: nested arrays are not supported")
            value = [bytes(f.parts[i]) for i in f.data] if sub == T.STRING else f.contents()
            if not value:
                continue  # the writer cannot write an empty array; nothing reads one
            out[key] = (value, vtype, sub)
        else:
            out[key] = (bytes(f.parts[f.data[0]]) if vtype == T.STRING else f.contents(), vtype, None)
    return out


def write_gguf(reader, out: Path, kv: dict, tensors: list) -> None:
    """Write ``out`` with the base's architecture and alignment, the keys ``kv`` and ``tensors`` [(name, array, type)]."""
    import gguf

    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    if "general.alignment" in reader.fields:
        writer.data_alignment = int(reader.fields["general.alignment"].contents())
    for key, (value, vtype, sub) in kv.items():
        writer.add_key_value(key, value, vtype, sub)
    for name, arr, qtype in tensors:
        writer.add_tensor(name, arr, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rewrite_gguf(src: Path, out: Path, overrides: dict) -> None:
    """``src`` with the keys in ``overrides`` ({key: (value, type, sub_type)}) replaced; tensors byte for byte."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    kv = copy_kv(reader, skip={"general.architecture", "general.alignment"})
    kv.update(overrides)
    write_gguf(reader, out, kv, [(t.name, t.data, t.tensor_type) for t in reader.tensors])
