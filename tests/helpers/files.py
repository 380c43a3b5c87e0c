"""Random test files and their digests: the tests' names for shoal.samples, which the demo and benches share."""

from __future__ import annotations

from shoal.samples import BLOCK, make_file, sha256_of

__all__ = ["BLOCK", "make_file", "sha256_of"]
