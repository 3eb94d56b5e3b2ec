"""One loop for standard and adversarial training and fine-tuning: the attack is a parameter."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.data import augment_batch, iterate_batches
from advfine.core.decision import correct
from advfine.core.files import ArtifactError, config_hash, load_tensor_file, save_tensor_file
from advfine.core.objectives import NFGSMAttack, TradesObjective
from advfine.core.runtime import autocast, check_precision, make_generator, place_model, to_device
from advfine.core.schedule import TrainSchedule

log = logging.getLogger("advfine")

RESUME_FORMAT = "advfine-resume-2"  # 2: epochs record their CPU time
# What makes a training batch adversarial: PGD (FGSM-RS is one-step PGD), N-FGSM, or TRADES (advfine.core.objectives)
TrainingAttack = PGDAttack | NFGSMAttack | TradesObjective


def attack_for_epoch(attack: TrainingAttack | None, epoch: int,
                     schedule: TrainSchedule) -> TrainingAttack | None:
    """The attack of epoch ``epoch``: ``attack`` at the schedule's ``eps_fraction`` of its eps (None: a clean
    epoch). Measured on digits: PGD training of the BN-free CNN8 from scratch without an eps warm-up
    collapses to a constant classifier (loss ln 10) within one epoch."""
    scale = schedule.eps_fraction(epoch)
    if attack is None or scale == 1.0:
        return attack
    if scale == 0:
        return None
    return attack.scaled(scale)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model``, persistent or not (fake-quant scales and ranges are buffers,
    the binary scheme's activation level is a non-persistent one), copied to the CPU."""
    tensors = {f"param:{k}": v.detach().cpu().clone() for k, v in model.named_parameters()}
    tensors |= {f"buffer:{k}": v.detach().cpu().clone() for k, v in model.named_buffers()}
    return tensors


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``model_tensors`` output back into the same model, in place (the optimizer keeps its
    references to the parameters)."""
    live = {f"param:{k}": v for k, v in model.named_parameters()}
    live |= {f"buffer:{k}": v for k, v in model.named_buffers()}
    if set(live) != set(tensors):
        raise ValueError("the resume checkpoint holds a different model: "
                         f"{sorted(set(live) ^ set(tensors))[:5]} differ")
    with torch.no_grad():
        for key, value in tensors.items():
            live[key].copy_(value)


def _fingerprint(model: nn.Module, schedule: TrainSchedule, attack: TrainingAttack | None, seed: int, n_examples: int,
                 precision: str, device: torch.device) -> str:
    """What a resume checkpoint must match: the starting weights, the settings, the attack, the seed,
    the data size and the device type (a CUDA generator's state cannot seed a CPU one, and the two
    devices' numbers differ anyway). A checkpoint from another config, parent or device type is
    ignored, never resumed."""
    digest = hashlib.sha256()
    for key, value in sorted(model_tensors(model).items()):
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    settings = {"cfg": dataclasses.asdict(schedule), "attack": attack.describe() if attack else None, "seed": seed,
                "n": n_examples, "precision": precision,
                "device_type": device.type}
    digest.update(config_hash(settings).encode())
    return digest.hexdigest()[:32]


def _rng_states(generators: dict[str, torch.Generator | None], device: torch.device) -> dict:
    """The state of every random number generator a training run may draw from: on CUDA, the default
    generator of the GPU it trains on only (a resumed job may see fewer GPUs, or get another one)."""
    np_state = np.random.get_state()
    states = {"generators": {k: g.get_state() for k, g in generators.items() if g is not None},
              "torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, generators: dict[str, torch.Generator | None], device: torch.device) -> None:
    for key, generator in generators.items():
        if generator is not None:
            generator.set_state(states["generators"][key])
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def restored_times(history: list[dict]) -> tuple[int, float, float]:
    """The epochs this run restored from earlier, interrupted attempts, and the wall and CPU seconds those
    attempts spent on them: a stage's cost counts them, so a resumed run reports what the whole training
    cost (``advfine.pipeline.meter.restored_cost``)."""
    restored = [record for record in history if record.get("restored")]
    return (len(restored), sum(r["wall_time_s"] for r in restored), sum(r["cpu_time_s"] for r in restored))


def resume_path_for(output: str | Path) -> Path:
    """Where a stage writing ``output`` keeps its per-epoch resume checkpoint: beside it, hidden."""
    output = Path(output)
    return output.with_name(f".{output.stem}.resume.pt")


def save_resume(path: Path, payload: dict) -> None:
    """One resume checkpoint per finished epoch, written atomically over the previous one."""
    save_tensor_file(path, {"format": RESUME_FORMAT, **payload})


def load_resume(path: Path, fingerprint: str) -> dict | None:
    """The resume checkpoint at ``path`` if it belongs to this run, else None (with the reason logged).
    An unreadable (truncated) file is ignored too: the run starts over rather than failing."""
    if not path.exists():
        return None
    try:
        payload = load_tensor_file(path, RESUME_FORMAT, "resume checkpoint")
    except ArtifactError as err:
        log.warning("ignoring %s and starting from epoch 0: %s", path, err)
        return None
    if payload.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it was written by a run with other settings, starting weights or device type", path)
        return None
    return payload


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  attack: TrainingAttack | None, generator: torch.Generator | None,
                  precision: str = "fp32", grad_clip_norm: float | None = None) -> tuple[float, int]:
    """One SGD step on a batch, adversarial when ``attack`` is given: the batch is first replaced by
    its adversarial version against the current model (in eval mode, gradients to the input only), then
    the model trains on it; TRADES instead adds its KL term to the clean loss. Forward passes run under
    ``precision`` (see ``runtime.autocast``). With ``grad_clip_norm``, the gradient of all parameters
    together is scaled down to that L2 norm when it is longer (``clip_grad_norm_``). Returns the batch's
    mean loss and its number of correct predictions (on the points trained on: the clean batch for TRADES)."""
    device = x.device
    with autocast(device, precision):
        if isinstance(attack, TradesObjective):
            loss, logits = attack.loss(model, x, y, generator)
        else:
            if attack is not None:
                x = attack(model, x, y, generator=generator)
            model.train()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return loss.item(), int(correct(logits.detach(), y).sum())


def train_model(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, schedule: TrainSchedule,
                attack: TrainingAttack | None, seed: int, device: torch.device, desc: str = "train",
                resume_path: str | Path | None = None, precision: str = "fp32") -> list[dict]:
    """Train ``model`` in place with SGD as ``schedule`` says (``schedule.TrainSchedule``).

    With ``attack`` given, each batch is replaced by its adversarial version computed against the
    current model (in eval mode) before the SGD step: PGD adversarial training (Madry et al.).
    With ``schedule.augment``, each clean batch is first randomly cropped (4-pixel zero padding) and
    flipped (``augment_batch``). Batch order, augmentation and attack random starts are drawn from
    generators seeded with ``seed``.
    With ``resume_path``, the model, optimizer, epoch, history and every RNG state are saved there after
    each epoch; a later call with the same starting weights and settings continues from the last
    finished epoch and ends with the same weights as an uninterrupted run (on CPU). The caller deletes
    the file once its outputs are written.
    ``precision`` is ``fp32`` or ``bf16`` (autocast for the training and attack forward passes).
    Returns one dict per epoch: lr (of its last batch), mean loss, accuracy on the batches trained on, wall
    and CPU time (and ``restored: True`` for epochs taken from a resume checkpoint).
    """
    check_precision(precision)
    place_model(model, device)
    # the whole training set lives on the device: batches are slices of it (no per-batch copies)
    x_all = to_device(train_x, device).contiguous(memory_format=torch.channels_last)
    y_all = to_device(train_y, device)
    generators = {"order": torch.Generator().manual_seed(seed),
                  "attack": make_generator(seed + 1, device),
                  "augment": make_generator(seed + 2, device) if schedule.augment else None}
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.learning_rate(0),
                                momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    history: list[dict] = []
    epochs = schedule.epochs
    first_epoch = 0
    if resume_path is not None:
        resume_path = Path(resume_path)
        fingerprint = _fingerprint(model, schedule, attack, seed, len(y_all), precision, device)
        state = load_resume(resume_path, fingerprint)
        if state is not None:
            load_model_tensors(model, state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_states(state["rng"], generators, device)
            # restored epochs are marked: an earlier, interrupted attempt computed them
            history = [dict(record, restored=True) for record in state["history"]]
            first_epoch = int(state["epoch"])
            log.info("%s: resuming after epoch %d of %d from %s", desc, first_epoch, epochs, resume_path)
    n_batches = (len(y_all) + schedule.batch_size - 1) // schedule.batch_size
    for epoch in range(first_epoch, epochs):
        epoch_attack = attack_for_epoch(attack, epoch, schedule)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = iterate_batches(x_all, y_all, schedule.batch_size, shuffle=True,
                                  generator=generators["order"])
        for batch, (x, y) in enumerate(tqdm(batches, total=n_batches, desc=f"{desc} epoch {epoch + 1}/{epochs}",
                                            mininterval=5.0, leave=False)):
            lr = schedule.learning_rate(epoch, batch, n_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if generators["augment"] is not None:
                x = augment_batch(x, generators["augment"])
            loss, n_correct = training_step(model, optimizer, x, y, epoch_attack, generators["attack"], precision,
                                            schedule.grad_clip_norm)
            loss_sum += loss * len(y)
            correct += n_correct
            seen += len(y)
        model.eval()
        record = {"epoch": epoch + 1, "lr": lr, "loss": loss_sum / seen, "train_acc": correct / seen,
                  "eps": epoch_attack.threat.config_eps if epoch_attack else 0.0,
                  "wall_time_s": time.perf_counter() - start, "cpu_time_s": time.process_time() - cpu_start}
        history.append(record)
        tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: lr {lr:g} loss {record['loss']:.4f} "
                   f"acc {record['train_acc']:.4f} ({record['wall_time_s']:.1f}s)")
        if resume_path is not None:
            save_resume(resume_path, {"fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
                                      "model": model_tensors(model), "optimizer": optimizer.state_dict(),
                                      "rng": _rng_states(generators, device)})
    model.eval()
    return history
