"""Sample locks for the unit tests of bake.lock."""

from __future__ import annotations

import hashlib

from bake.lock.format import (
    Declared,
    DeclaredRepo,
    Distribution,
    Lock,
    LockedFile,
    LockedRepo,
    PythonLock,
    Target,
)

BASE_DIGEST = "sha256:" + "b" * 64
TARGET = Target("3.11.2", "cpython", "cp311", "x86_64", "glibc 2.36")
COMMIT = "c" * 40
FILES = "https://files.example.test/packages"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dist(name: str, version: str, file: str) -> Distribution:
    return Distribution(name, version, file, sha(file), f"{FILES}/{file}")


DISTS = (
    dist("numpy", "2.1.3",
         "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
    dist("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl"),
    dist("tokenizers", "0.23.3", "tokenizers-0.23.3-cp310-abi3-manylinux_2_17_x86_64.whl"),
)
MODEL = LockedRepo(
    "model", "org/model", "main", COMMIT, ("*.json", "*.safetensors"), (),
    (LockedFile("config.json", 23, blob="a" * 40),
     LockedFile("model.safetensors", 4096, sha256="d" * 64)),
)
DATA = LockedRepo(
    "dataset", "org/data", "v1", "e" * 40, ("data/",), (),
    (LockedFile("data/train.csv", 10, blob="f" * 40),),
)


def declared(requirements: tuple[str, ...] = ("numpy>=2", "six", "tokenizers"),
             **changes: object) -> Declared:
    base = Declared(
        base="python:3.11-slim",
        requirements=requirements,
        only_binary=True,
        models=(MODEL.declared,),
        datasets=(DATA.declared,),
    )
    return Declared(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def sample_lock(**changes: object) -> Lock:
    lock = Lock(declared(), BASE_DIGEST, PythonLock(TARGET, DISTS), (MODEL,), (DATA,))
    return Lock(**{**lock.__dict__, **changes})  # type: ignore[arg-type]


__all__ = ["BASE_DIGEST", "DATA", "DISTS", "MODEL", "TARGET", "DeclaredRepo", "sample_lock"]
