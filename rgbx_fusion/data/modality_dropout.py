"""Per-modality dropout of training samples: train a multi-modality network for missing sensors.

A dropped modality is marked absent in the sample (``meta["present"]``) and its channels
are set to 0, the "missing" value of normalised aux; the network then treats it like a
sensor that delivered nothing (:class:`~rgbx_fusion.models.multimodal.MultiModalSegmenter`
skips the stream or substitutes its learned token). Each aux modality is dropped
independently with its own probability; RGB is the stream every sample keeps, so no
setting can leave a sample without any input.

The draws are seeded by the sample's augmentation seed, so a resumed run drops the same
modalities of the same samples as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from rgbx_fusion.errors import ConfigError

OPTION = "data.modality_dropout"
_STREAM = 0x6D6F64  # separates the dropout draws from the augmentation's own


class ModalityDropout:
    """Drop each aux modality of a normalised sample with its probability.

    Args:
        probabilities: modality name → probability in [0, 1), or one probability for
            every aux modality.
        modalities: the dataset's aux modalities, name → channels, in channel order.
        source: where the modalities are declared (e.g. the dataset's ``dataset.json``),
            named in errors.

    Raises:
        ConfigError: a name that is not one of ``modalities`` (``rgb`` included: RGB is
            never dropped), a probability outside [0, 1) (1 would drop the modality from
            every sample, so its stream would never train), or no multi-modality dataset.
    """

    def __init__(
        self,
        probabilities: Mapping[str, float] | float,
        modalities: Mapping[str, int] | None,
        source: str = "the dataset",
    ) -> None:
        if not modalities:
            raise ConfigError(
                f"{OPTION} needs a dataset of several named aux modalities (e.g. "
                f"SyntheticRGBX(modality='depth,thermal')); {source} has one aux image, "
                "which MultiModalSegmenter's absent handling does not cover"
            )
        names = list(modalities)
        if not isinstance(probabilities, Mapping):
            probabilities = dict.fromkeys(names, probabilities)
        self.p: dict[str, float] = {}
        for name, p in probabilities.items():
            if name == "rgb":
                raise ConfigError(
                    f"{OPTION}['rgb']: RGB is the stream every sample keeps, so dropout "
                    "can never drop every stream; drop aux modalities only "
                    f"({names})"
                )
            if name not in modalities:
                raise ConfigError(
                    f"{OPTION} names modality {name!r}, which {source} does not have; "
                    f"its modalities are {names}"
                )
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
                raise ConfigError(
                    f"{OPTION}[{name!r}] must be a probability in [0, 1), got {p!r}"
                    + (
                        " (1 drops the modality from every sample: its stream would "
                        "never train; leave it out of the dataset's modality instead)"
                        if isinstance(p, int | float) and p == 1
                        else ""
                    )
                )
            self.p[name] = float(p)
        self.names = names
        self.slices: dict[str, slice] = {}
        start = 0
        for name, channels in modalities.items():
            self.slices[name] = slice(start, start + channels)
            start += channels

    def __repr__(self) -> str:
        return f"ModalityDropout({self.p})"

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """Return ``sample`` with dropped modalities absent and zeroed (a copy of ``aux``
        and ``meta`` when anything is dropped)."""
        if not any(self.p.values()):
            return sample
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        draws = np.random.default_rng([seed, _STREAM]).random(len(self.names))
        present = list(sample["meta"].get("present", [True] * len(self.names)))
        dropped = [n for n, u in zip(self.names, draws, strict=True) if u < self.p.get(n, 0.0)]
        if not dropped:
            return sample
        aux = sample["aux"].clone()
        for name in dropped:
            present[self.names.index(name)] = False
            aux[self.slices[name]] = 0
        meta = {**sample["meta"], "present": present}
        return {**sample, "aux": aux, "meta": meta}


__all__ = ["OPTION", "ModalityDropout"]
