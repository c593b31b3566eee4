"""VoCo: K learned `<voco>` tokens after the image; the text sees only them (the method itself)."""

from vococli.compressors.base import Compressor


class Voco(Compressor):
    name = "voco"
