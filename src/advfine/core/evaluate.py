"""Clean accuracy, and robust accuracy as the per-sample worst case over an attack suite.

The suite runs in a fixed order, white-box first: the paper's PGD, APGD-CE, APGD-T, FAB-T (gradient
attacks on the model itself), then the transfer attack (PGD crafted on a fake-quantized model's float
twin, which has the same weights and a true gradient), then the Square attack (black-box, no
gradient). Each attack faces only the samples every earlier attack left standing (a cascade, as in
AutoAttack), so a sample counts as robust only if it is classified correctly clean and under every
attack: ``robust_acc`` is the per-sample worst case, never an average. Each attack records how many
samples it broke that the earlier ones missed and the robust accuracy after it; PGD comes first, so
``robust_acc_pgd`` is the paper's own metric. Every point an attack returns is checked to lie in the
eps-ball and in [0, 1] before the model's prediction on it counts.

A sample's random starts (PGD, APGD) are drawn once for the whole test set, so its attack does not
depend on which samples share its batch (the Square attack shares its random windows across a batch,
as in the reference code).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch
from torch import nn
from tqdm import tqdm

from advfine.core.attacks.apgd import apgd, n_target_classes, top_k_targets
from advfine.core.attacks.fab import fab_t
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.square import square_l2, square_linf
from advfine.core.attacks.threat import ThreatModel
from advfine.core.catalog import ATTACKS, WHITE_BOX_ATTACKS, check_attack_suite, escalation_step_suite
from advfine.core.data import iterate_batches
from advfine.core.decision import correct
from advfine.core.runtime import autocast, make_generator, place_model, to_device

log = logging.getLogger("advfine")

WHITE_BOX = WHITE_BOX_ATTACKS


@dataclass(frozen=True)
class Suite:
    """The attacks of an evaluation and their settings. ``pgd`` is the paper's attack (the config's
    ``attack.eval``); its threat model serves every attack."""

    pgd: PGDAttack
    attacks: tuple[str, ...] = ("pgd", "transfer")
    apgd_steps: int = 100
    apgd_restarts: int = 1
    target_classes: int = 9
    fab_steps: int = 100
    square_queries: int = 5000
    square_p_init: float = 0.8

    def __post_init__(self):
        check_attack_suite(self.attacks)

    @classmethod
    def from_config(cls, attack_cfg: dict, evaluate_cfg: dict) -> "Suite":
        """From the config's ``attack`` and ``evaluate`` sections; the threat model is ``attack.eval``'s."""
        apgd, fab, square = evaluate_cfg["apgd"], evaluate_cfg["fab"], evaluate_cfg["square"]
        return cls(pgd=PGDAttack.from_config(attack_cfg, "eval"),
                   attacks=tuple(evaluate_cfg["attacks"]), apgd_steps=apgd["steps"], apgd_restarts=apgd["restarts"],
                   target_classes=apgd["target_classes"], fab_steps=fab["steps"], square_queries=square["queries"],
                   square_p_init=square["p_init"])

    @property
    def threat(self) -> ThreatModel:
        """The threat model every attack of the suite runs in: the paper's attack's."""
        return self.pgd.threat

    def describe(self) -> dict:
        return {"attacks": list(self.attacks), "pgd": self.pgd.describe(), "eps_pixel": self.threat.eps,
                "apgd": {"steps": self.apgd_steps, "restarts": self.apgd_restarts, "rho": 0.75},
                "target_classes": self.target_classes, "fab": {"steps": self.fab_steps},
                "square": {"queries": self.square_queries, "p_init": self.square_p_init},
                "norm": self.threat.norm}


@dataclass(frozen=True)
class Escalation:
    """Stronger attacks for the nodes whose evaluation may be too weak: on every node (``always`` in ``when``),
    or when the model is quantized, or the audit raised one of the checks in ``when``, each suite of ``steps``
    in turn attacks the samples still standing, until a step breaks none (or the steps run out). Each step runs its own attacks (``attacks``
    after the leading ``pgd``, which only carries the threat model) at its own settings."""

    when: tuple[str, ...] = ()
    steps: tuple[Suite, ...] = ()

    @classmethod
    def from_config(cls, attack_cfg: dict, evaluate_cfg: dict) -> "Escalation":
        """From the config's ``evaluate.escalation`` (its ``when`` and ``steps``; each step has the keys of
        the ``evaluate`` section that set a suite: attacks, apgd, fab, square)."""
        section = evaluate_cfg["escalation"]
        steps = tuple(Suite.from_config(attack_cfg, step | {"attacks": escalation_step_suite(step)})
                      for step in section["steps"])
        return cls(when=tuple(section["when"]), steps=steps)

    def reasons(self, quantized: bool, flags: list[str]) -> list[str]:
        """What calls for escalating a node (empty: nothing does, or there are no steps)."""
        found = ["always"] + (["quantized"] if quantized else []) + list(flags)
        return [reason for reason in found if reason in self.when] if self.steps else []


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
              precision: str = "fp32") -> torch.Tensor:
    """The model's logits on ``x`` (float32, on the CPU), in eval mode, at ``precision``."""
    model.eval()
    with autocast(device, precision):
        out = [model(to_device(xb, device)).float().cpu() for xb, _ in iterate_batches(x, x, batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
            precision: str = "fp32") -> torch.Tensor:
    """The predicted class of each sample (argmax; whether it counts as correct is ``decision.correct``'s)."""
    logits = logits_of(model, x, batch_size, device, precision)
    return logits.argmax(1) if len(logits) else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   device: torch.device, precision: str = "fp32") -> float:
    return correct(logits_of(model, x, batch_size, device, precision), y).float().mean().item()


def start_noise_for(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform random start per test sample (on the CPU, so it is the same on any device)."""
    return torch.rand(x.shape, generator=generator, dtype=x.dtype)


def _craft(name: str, suite: Suite, model: nn.Module, source: nn.Module | None, xb, yb, noise, seed: int,
           num_classes: int) -> torch.Tensor:
    """The adversarial points of attack ``name`` for one batch (not yet checked or judged)."""
    threat = suite.threat
    if name == "pgd":
        return replace(suite.pgd, stop_on_success=True)(model, xb, yb, start_noise=noise[0])
    if name == "transfer":  # crafted on the float twin, run to the last step: fooling it says nothing
        return replace(suite.pgd, stop_on_success=False)(source, xb, yb, start_noise=noise[0])
    if name == "square":
        if threat.norm == "l2":
            return square_l2(model, xb, yb, threat, suite.square_queries, suite.square_p_init, seed)
        generator = make_generator(seed, xb.device)
        return square_linf(model, xb, yb, threat, suite.square_queries, suite.square_p_init, generator)[0]
    if name == "fab_t":
        targets = n_target_classes(suite.target_classes, num_classes)
        return fab_t(model, xb, yb, threat, suite.fab_steps, targets, num_classes, seed)
    x_adv, standing = xb.clone(), torch.ones(len(yb), dtype=torch.bool, device=xb.device)
    if name == "apgd_ce":
        runs = [("ce", None)] * suite.apgd_restarts
    else:  # apgd_t: each of the top wrong classes in turn, as AutoAttack's APGD-T
        with torch.no_grad():
            clean_logits = model(xb)
        runs = [("dlr-targeted", top_k_targets(clean_logits, k))
                for k in range(2, n_target_classes(suite.target_classes, num_classes) + 2)] * suite.apgd_restarts
    for run, (loss, target) in enumerate(runs):
        idx = standing.nonzero().flatten()
        if len(idx) == 0:
            break
        start = noise[run % len(noise)][idx]
        found, fooled = apgd(model, xb[idx], yb[idx], threat, suite.apgd_steps, loss,
                             None if target is None else target[idx], start_noise=start)
        x_adv[idx[fooled]] = found[fooled]
        standing[idx[fooled]] = False
    return x_adv


def run_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor, suite: Suite,
              batch_size: int, device: torch.device, seed: int, float_twin: nn.Module | None = None,
              precision: str = "fp32", num_classes: int = 10,
              names: tuple[str, ...] | None = None, points: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Attack the ``candidates`` (boolean per sample, usually the clean-correct ones) with the suite's
    attacks (or only ``names`` of them), in cascade. Returns ``(broken_by, records)``: per sample the
    index in ``ATTACKS`` of the attack that broke it (-1: never broken, or not a candidate), and per
    attack its record (samples attacked, samples broken, seconds, robust accuracy after it over all
    ``len(y)`` samples). ``points`` (shaped like ``x``, on the CPU), when given, receives the adversarial
    point of every sample broken."""
    generator = make_generator(seed, torch.device("cpu"))
    # two uniform starts per sample, drawn once: PGD's (and the transfer attack's second), APGD's
    noise_pgd, noise_transfer = start_noise_for(x, generator), start_noise_for(x, generator)
    noise_apgd = [start_noise_for(x, generator) for _ in range(max(suite.apgd_restarts, 1))]
    standing = candidates.clone()
    broken_by = torch.full((len(y),), -1, dtype=torch.long)
    records = {}
    for name in names or suite.attacks:
        position = ATTACKS.index(name)
        if name == "transfer" and float_twin is None:
            continue  # only fake-quantized models have a float twin
        start = time.perf_counter()
        idx = standing.nonzero().flatten()
        attacked = len(idx)
        n_batches = (attacked + batch_size - 1) // batch_size
        for b, part in enumerate(tqdm(idx.split(batch_size), total=n_batches, desc=name, mininterval=5.0, leave=False)):
            xb, yb = to_device(x[part], device), to_device(y[part], device)
            noise = {"transfer": [noise_transfer], "apgd_ce": noise_apgd, "apgd_t": noise_apgd}.get(name, [noise_pgd])
            noise = [to_device(n[part], device) for n in noise]
            with autocast(device, precision):
                x_adv = _craft(name, suite, model, float_twin, xb, yb, noise, seed + 1000 * position + b, num_classes)
            with torch.no_grad():
                inside = suite.threat.contains(x_adv, xb)
                fooled = ~correct(model(x_adv), yb) & inside
            if (~inside).any():
                log.warning("%s returned %d point(s) outside the threat model; they do not count", name,
                            int((~inside).sum()))
            broken = part[fooled.cpu()]
            standing[broken] = False
            broken_by[broken] = position
            if points is not None:
                points[broken] = x_adv[fooled].detach().to(points.device, points.dtype)
        records[name] = {"attacked": attacked, "broken": int((broken_by == position).sum()),
                         "robust_acc_after": standing.float().mean().item(),
                         "wall_time_s": time.perf_counter() - start, "norm": suite.threat.norm,
                         "eps_pixel": suite.threat.eps}
        log.info("%s: %d attacked, %d broken, robust accuracy now %.4f", name, attacked, records[name]["broken"],
                 records[name]["robust_acc_after"])
    return broken_by, records


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: Suite, batch_size: int,
                   device: torch.device, seed: int, float_twin: nn.Module | None = None,
                   precision: str = "fp32", num_classes: int = 10) -> dict:
    """Clean accuracy and the suite's per-sample worst-case robust accuracy, with every attack's
    record. Also returns the per-sample outcome (``predictions``, ``clean_ok``, ``broken_by``) for the
    caller to save, and ``points``: each broken sample's adversarial point, the clean image elsewhere)."""
    place_model(model, device)
    if float_twin is not None:
        place_model(float_twin, device).eval()
    logits = logits_of(model, x, batch_size, device, precision)
    predictions, clean_ok = logits.argmax(1), correct(logits, y)
    points = x.clone()
    broken_by, records = run_suite(model, x, y, clean_ok, suite, batch_size, device, seed, float_twin, precision,
                                   num_classes, points=points)
    robust_ok = clean_ok & (broken_by < 0)
    ran = list(records)
    white = [name for name in ran if name in WHITE_BOX]
    return {"clean_acc": clean_ok.float().mean().item(), "robust_acc": robust_ok.float().mean().item(),
            "robust_acc_pgd": records["pgd"]["robust_acc_after"],
            "robust_acc_whitebox": records[white[-1]]["robust_acc_after"],
            "n_test": len(y), "precision": precision, "attack": suite.pgd.describe(), "suite": suite.describe(),
            "attacks": {name: records[name] for name in ran}, "attack_order": ran,
            "per_sample": {"predictions": predictions, "clean_ok": clean_ok, "broken_by": broken_by,
                           "points": points}}


def escalate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_sample: dict, steps: tuple[Suite, ...],
             batch_size: int, device: torch.device, seed: int, float_twin: nn.Module | None = None,
             precision: str = "fp32", num_classes: int = 10) -> tuple[dict, list[dict]]:
    """Attack the samples ``per_sample`` (``evaluate_model``'s) left standing with each stronger suite of
    ``steps`` in turn, until a step breaks none (or none is left standing). Returns the per-sample outcome
    after escalation (with ``broken_in_step``: 0 for the evaluation's own suite, k for step k, -1 never
    broken) and one record per step run: its settings, the samples it attacked and broke, the robust
    accuracy after it, its attacks' records and its wall time."""
    broken_by, points = per_sample["broken_by"].clone(), per_sample["points"].clone()
    broken_in_step = torch.where(broken_by >= 0, 0, -1)
    standing = per_sample["clean_ok"] & (broken_by < 0)
    records = []
    for k, suite in enumerate(steps, start=1):
        if not standing.any():
            break
        start = time.perf_counter()
        attacked = int(standing.sum())
        step_broken_by, attacks = run_suite(model, x, y, standing, suite, batch_size, device, seed + 7919 * k,
                                            float_twin, precision, num_classes, names=suite.attacks[1:],
                                            points=points)
        new = step_broken_by >= 0
        broken_by[new], broken_in_step[new] = step_broken_by[new], k
        standing &= ~new
        records.append({"step": k, "suite": suite.describe(), "attacked": attacked, "broken": int(new.sum()),
                        "robust_acc_after": standing.float().mean().item(), "attacks": attacks,
                        "wall_time_s": time.perf_counter() - start})
        log.info("escalation step %d (%s): %d attacked, %d broken, robust accuracy now %.4f", k,
                 ", ".join(suite.attacks[1:]), attacked, records[-1]["broken"], records[-1]["robust_acc_after"])
        if not new.any():
            break
    return per_sample | {"broken_by": broken_by, "broken_in_step": broken_in_step, "points": points}, records


def broken_per_attack(suites_records: list[dict]) -> dict:
    """The samples each attack broke, summed over the records of several suites run in cascade (the
    evaluation's suite and its escalation steps): {attack: {"broken": n}}."""
    total: dict[str, dict] = {}
    for records in suites_records:
        for name, record in records.items():
            total.setdefault(name, {"broken": 0})["broken"] += record["broken"]
    return total


def robust_subset(n: int, images: int | None, seed: int) -> torch.Tensor:
    """Which of ``n`` test samples the deployed INT8 model is attacked on: a fixed random subset of
    ``images`` of them drawn with ``seed`` (the node's evaluation seed: the same samples for every node of
    a seed), or all of them (``images`` None or at least ``n``)."""
    chosen = torch.ones(n, dtype=torch.bool)
    if images is not None and images < n:
        chosen[:] = False
        chosen[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:images]] = True
    return chosen


def evaluate_deployed(int8_model: nn.Module, float_twin: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: Suite,
                      batch_size: int, seed: int, num_classes: int = 10,
                      fake_quant_outcome: dict | None = None, robust_images: int | None = None) -> dict:
    """The robustness of the real integer model a user deploys (CPU, no gradients), in cascade on the samples
    it classifies correctly: the transfer attack, then the Square attack. Its transfer attack first tries
    each sample's adversarial point on the fake-quantized model it was converted from
    (``fake_quant_outcome``: ``evaluate_model``'s per-sample outcome, after escalation; the two models agree
    on nearly every prediction, so what broke one almost always breaks the other), then PGD crafted on the
    float twin on the samples still standing.

    ``robust_images``: attack only a fixed random subset of that many samples (``robust_subset``); its
    clean accuracy is still over every sample. The robust accuracy is then over the subset, and the
    fake-quant model's (``fake_quant_robust_acc``) is reported over the same samples beside it."""
    cpu = torch.device("cpu")
    clean_ok = correct(logits_of(int8_model, x, batch_size, cpu), y)
    attacked = robust_subset(len(y), robust_images, seed)
    transfer = ATTACKS.index("transfer")
    broken_by = torch.full((len(y),), -1, dtype=torch.long)
    start, reused = time.perf_counter(), 0
    if fake_quant_outcome is not None:
        # the fake-quant model's points where it was broken (its clean misclassifications have no point)
        tried = clean_ok & attacked & (fake_quant_outcome["broken_by"] >= 0)
        idx = tried.nonzero().flatten()
        if len(idx):
            adv = fake_quant_outcome["points"][idx]
            fooled = ~correct(logits_of(int8_model, adv, batch_size, cpu), y[idx]) & suite.threat.contains(adv, x[idx])
            broken_by[idx[fooled]] = transfer
            reused = int(fooled.sum())
    reuse_s = time.perf_counter() - start
    standing = clean_ok & attacked & (broken_by < 0)
    names = tuple(name for name in ("transfer", "square") if name in suite.attacks) or ("transfer",)
    # the attacks see the subset only: their records' robust accuracies are over it
    subset = attacked.nonzero().flatten()
    rest, records = run_suite(int8_model, x[subset], y[subset], standing[subset], suite, batch_size, cpu, seed,
                              float_twin.cpu(), num_classes=num_classes, names=names)
    broken_by[subset] = torch.where(rest >= 0, rest, broken_by[subset])
    robust_ok = clean_ok & (broken_by < 0)
    if fake_quant_outcome is not None:  # one transfer record for both sources, over every attacked sample
        crafted = records.get("transfer", {"broken": 0, "wall_time_s": 0.0, "norm": suite.threat.norm,
                                           "eps_pixel": suite.threat.eps,
                                           "robust_acc_after": standing[subset].float().mean().item()})
        merged = crafted | {"attacked": int((clean_ok & attacked).sum()), "broken": crafted["broken"] + reused,
                            "from_fake_quant_points": reused, "wall_time_s": crafted["wall_time_s"] + reuse_s}
        records = {"transfer": merged, **{name: r for name, r in records.items() if name != "transfer"}}
    result = {"robust_acc": robust_ok[attacked].float().mean().item(), "robust_images": int(attacked.sum()),
              "attacks": records, "per_sample": {"clean_ok": clean_ok, "broken_by": broken_by, "attacked": attacked}}
    if fake_quant_outcome is not None:
        fake_quant_robust = fake_quant_outcome["clean_ok"] & (fake_quant_outcome["broken_by"] < 0)
        result["fake_quant_robust_acc"] = fake_quant_robust[attacked].float().mean().item()
    return result


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_ok: torch.Tensor, suite: Suite,
                     fractions: list[float], batch_size: int, device: torch.device, seed: int,
                     precision: str = "fp32", num_classes: int = 10) -> list[dict]:
    """Robust accuracy at eps * f for each fraction f under APGD-CE (the suite's steps, one restart):
    one parameter-free attack for every radius, so the curve's shape is comparable across models.
    The radii are attacked from the smallest up, each on the samples every smaller radius left
    standing: the balls are nested, so a point that breaks a sample at a small radius breaks it at
    every larger one (the curve cannot rise with eps, and the cascade attacks far fewer samples)."""
    standing, at = clean_ok.clone(), {}
    for fraction in sorted(set(fractions)):
        if fraction == 0:
            at[fraction] = {"eps_fraction": 0.0, "eps_pixel": 0.0, "norm": suite.threat.norm,
                            "robust_acc": clean_ok.float().mean().item()}
            continue
        scaled = replace(suite, pgd=suite.pgd.scaled(fraction), apgd_restarts=1)
        broken_by, _ = run_suite(model, x, y, standing, scaled, batch_size, device, seed, precision=precision,
                                 num_classes=num_classes, names=("apgd_ce",))
        standing &= broken_by < 0
        at[fraction] = {"eps_fraction": float(fraction), "eps_pixel": scaled.threat.eps, "norm": scaled.threat.norm,
                        "robust_acc": standing.float().mean().item()}
    return [at[fraction] for fraction in fractions]


def divergence(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> str | None:
    """Why a model counts as diverged (non-finite weights, buffers or logits on the test set), or None.
    A diverged model is reported as such, never scored: NaN logits would "predict" class 0."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        return f"non-finite weights or buffers: {', '.join(bad[:3])}" + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
    logits = logits_of(place_model(model, device), x, batch_size, device)
    if not torch.isfinite(logits).all():
        return f"non-finite logits on {int((~torch.isfinite(logits).all(1)).sum())} of {len(x)} test images"
    return None
