"""Guards of a training run: non-finite values, checkpoints that do not fit, metadata.

* :class:`NonFiniteGuard` finds a NaN/inf loss or gradient with one device-to-host
  read per optimizer step, and :func:`report_nonfinite` stops (``model.nonfinite:
  stop``) or skips that update, naming the batch's samples (``off``: no check).
* :func:`checkpoint_metadata` is what every checkpoint of ``fit`` carries besides
  Lightning's state: package version, class names and the resolved config (YAML).
* :func:`check_checkpoint_fits` turns a checkpoint built for another network (number
  of classes, backbone, fusion) into a :class:`~rgbx_fusion.errors.WeightsMismatchError`
  listing the keys, before Lightning's shape traceback.
* :func:`out_of_memory_error` words an accelerator out-of-memory as what to change.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rgbx_fusion.errors import (
    CheckpointError,
    DeviceMemoryError,
    NonFiniteError,
    WeightsMismatchError,
)
from rgbx_fusion.models.state_dict import check_keys


def describe_batch(meta: Sequence[Any], limit: int = 8) -> str:
    """The samples of a batch as named by their ``meta`` (``name`` and any file paths)."""
    names: list[str] = []
    for item in meta:
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("name", "?"))
        paths = [str(v) for k, v in item.items() if k.endswith(("path", "file")) and v]
        names.append(f"{name} ({', '.join(paths)})" if paths else name)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) if names else "(no meta)"


def report_nonfinite(task: Any, what: str, value: float, meta: Sequence[Any]) -> None:
    """Raise :class:`NonFiniteError` (``task.nonfinite == "stop"``) or warn (``"skip"``)."""
    trainer = task._trainer
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}" if trainer else "a batch"
    msg = (
        f"non-finite {what} ({value}) at {where}; samples: {describe_batch(meta)}. "
        "Check these files, lower model.lr, set --trainer.gradient_clip_val (e.g. 1.0), "
        "or set model.nonfinite: skip to drop such batches"
    )
    if getattr(task, "nonfinite", "stop") == "skip":
        warnings.warn(
            msg.split("; samples")[0] + f"; skipped the update of {describe_batch(meta)}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    raise NonFiniteError(msg)


class NonFiniteGuard:
    """Non-finite losses and gradients of one optimizer step, read from the device once.

    :meth:`add_loss` runs in every training step and only queues the (detached) loss:
    no host-device synchronisation there. :meth:`check` runs before the optimizer
    step and reduces the queued losses and the gradient norms to one tensor, whose
    finiteness is the single value read back; names are looked up only when it fails.
    """

    def __init__(self) -> None:
        self.losses: list[Tensor] = []
        self.meta: list[Any] = []
        self.checked_meta: list[Any] = []

    def add_loss(self, loss: Tensor, meta: Sequence[Any] | None) -> None:
        """Queue the loss of one (micro-)batch and its samples' ``meta``."""
        self.losses.append(loss.detach().float().reshape(1))
        self.meta.extend(meta or [])

    def check(self, module: nn.Module, gradients: bool = True) -> tuple[str, float] | None:
        """``None`` when every queued loss (and gradient) is finite, else ``(what, value)``
        with ``what`` = ``"loss"`` or ``"gradient of <parameter names>"``. Clears the queue;
        the samples of the checked batches stay in :attr:`checked_meta`.
        """
        losses, self.losses = self.losses, []
        self.checked_meta, self.meta = self.meta, []
        named = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
        named = named if gradients else []
        norms = list(torch._foreach_norm([g for _, g in named])) if named else []
        values = losses + [v.float().reshape(1) for v in norms]
        if not values or bool(torch.isfinite(torch.cat(values)).all()):
            return None
        for loss in losses:
            if not bool(torch.isfinite(loss).all()):
                return "loss", float(loss.item())
        bad = [n for (n, _), v in zip(named, norms, strict=True) if not torch.isfinite(v)]
        return f"gradient of {_name_list(bad)}", float("nan")


def _name_list(names: Sequence[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def checkpoint_metadata(class_names: Sequence[str], config: str | None) -> dict[str, Any]:
    """``{"version", "class_names", "config"}`` stored under ``checkpoint["rgbx_fusion"]``."""
    from rgbx_fusion import __version__

    return {"version": __version__, "class_names": list(class_names), "config": config}


def check_checkpoint_fits(
    task: nn.Module, checkpoint: Mapping[str, Any], source: str = "the checkpoint"
) -> None:
    """Raise :class:`WeightsMismatchError` unless the checkpoint's weights fit ``task``.

    The message lists the mismatched keys and, where the checkpoint records them,
    the network settings that differ (classes, backbone, fusion). A checkpoint of other
    aux modalities than the data's is a :class:`CheckpointError` naming them first.
    """
    check_modalities_fit(task, checkpoint, source)
    given = checkpoint.get("state_dict")
    if not isinstance(given, Mapping):
        return
    expected = {k: v.shape for k, v in task.state_dict().items()}
    try:
        check_keys(expected, given, "the checkpoint's weights")
    except WeightsMismatchError as exc:
        hint = _setting_differences(task, checkpoint)
        raise WeightsMismatchError(
            "the checkpoint's weights" + (f" ({hint})" if hint else ""),
            exc.missing,
            exc.unexpected,
            exc.shapes,
        ) from None


def check_modalities_fit(task: Any, checkpoint: Mapping[str, Any], source: str) -> None:
    """Raise a :class:`CheckpointError` when the checkpoint was trained on other aux
    modalities (names, order or channels) than the data module links to ``task``."""
    hp = checkpoint.get("hyper_parameters") or {}
    mine = dict(getattr(task, "hparams", {}) or {})
    theirs = dict(hp.get("modalities") or {}) or None
    now = dict(mine.get("modalities") or {}) or None
    if (theirs and list(theirs.items())) == (now and list(now.items())):  # order counts
        return
    if theirs is None or now is None:
        trained = theirs or f"one aux image of {hp.get('aux_channels', '?')} channel(s)"
        data = now or f"one aux image of {mine.get('aux_channels', '?')} channel(s)"
        raise CheckpointError(
            f"{source} was trained on {trained}, but the data has {data}: use the "
            "dataset's modality setting the model was trained with"
        )
    problems = [
        f"{m!r} ({c} channel(s)) is not in the data" for m, c in theirs.items() if m not in now
    ]
    problems += [f"{m!r} is not in the checkpoint" for m in now if m not in theirs]
    problems += [
        f"{m!r} has {theirs[m]} channel(s) in the checkpoint and {now[m]} in the data"
        for m in theirs
        if m in now and theirs[m] != now[m]
    ]
    if not problems:
        problems.append(f"the order differs: checkpoint {list(theirs)}, data {list(now)}")
    raise CheckpointError(
        f"{source} does not fit the data's modalities: {'; '.join(problems)} (checkpoint "
        f"{theirs}, data {now}); set the dataset's modality to "
        f"{','.join(theirs)!r}"
    )


def _setting_differences(task: Any, checkpoint: Mapping[str, Any]) -> str:
    hp = checkpoint.get("hyper_parameters") or {}
    mine = getattr(task, "hparams", {}) or {}
    diffs = []
    if "num_classes" in hp and hp["num_classes"] != mine.get("num_classes"):
        diffs.append(f"num_classes: checkpoint {hp['num_classes']}, now {mine.get('num_classes')}")
    theirs_net = (hp.get("network") or {}) if isinstance(hp.get("network"), Mapping) else {}
    mine_net = mine.get("network") if isinstance(mine.get("network"), Mapping) else {}
    t_args, m_args = theirs_net.get("init_args") or {}, (mine_net or {}).get("init_args") or {}
    for key in ("backbone", "aux_backbone", "fusion_stage", "fusion", "decoder"):
        if key in t_args and key in m_args and t_args[key] != m_args[key]:
            diffs.append(f"{key}: checkpoint {_short(t_args[key])}, now {_short(m_args[key])}")
    return "; ".join(diffs)


def _short(value: Any) -> str:
    if isinstance(value, Mapping) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    return repr(value)


def out_of_memory_error(
    exc: BaseException, settings: Mapping[str, Any] | None = None
) -> DeviceMemoryError:
    """A :class:`DeviceMemoryError` for ``exc`` that says which settings to lower."""
    s = dict(settings or {})
    batch = s.get("data.batch_size")
    size = s.get("data.train_size")
    precision = s.get("trainer.precision")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    tips = [
        f"a smaller --data.batch_size (now {batch})" if batch else "a smaller --data.batch_size",
        f"a smaller --data.train_size (now {size})" if size else "smaller --data.train_size crops",
        "--trainer.precision=bf16-mixed (or 16-mixed)"
        + (f" (now {precision})" if precision else ""),
        "--trainer.accumulate_grad_batches=N to keep the effective batch",
    ]
    return DeviceMemoryError(f"out of accelerator memory: {first}. Try " + "; ".join(tips))
