"""The records of a W&B run's transaction log (`run-<id>.wandb`), for tests that read back an offline run.

wandb (from 0.19 on) writes and reads this file in its Go core and no longer ships a Python reader, so the file's
framing is read here: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB log records in 32 KiB blocks
(each record: crc32c, length, type FULL/FIRST/MIDDLE/LAST), each payload a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), f"{path}: not a W&B log"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the block's tail is too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
        else:  # zeros at the end of a file still being written
            break
    return out


def read_run(run_folder: Path) -> dict:
    """{"run": Run record, "history": [{key: value}], "summary": {key: value}, "config": {key: value}} of the
    (offline) run folder `run_folder` (`<dir>/wandb/offline-run-...`)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = Path(run_folder).glob("*.wandb")
    out: dict = {"run": None, "history": [], "summary": {}, "config": {}}
    for payload in payloads(log):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
    return out
