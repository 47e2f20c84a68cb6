"""OTLA dual: entropic optimal-transport label assignment in both directions (SALCR's DAGL).

Sources: OTLA (Wang et al., ECCV 2022), Sinkhorn label assignment; SALCR (IJCV 2025)
Sec. 3.3, Eq. 4 (dual association), official ``cross_association.part_ot`` /
``sinkhorn_solver`` (``shared/notes/salcr_reference.md`` Sec. 5.1, ``peers.md`` Sec. 4).

For the visible instances and the infrared clusters (and symmetrically)::

    D^{vr}_{ik} = || f^v_i - c^r_k ||^2                         (N_v x K_r cost)
    Q^{vr} = argmin_{Q 1 = 1/N_v, Q^T 1 = 1/K_r}  <Q, D> - (1/lambda) H(Q)   (Eq. 4)
    yhat^r_i = argmax_k Q^{vr}_{ik}

with ``c^r_k`` the mean feature of infrared cluster k and ``lambda = 5`` (``lambda_ot``).
The plan is found by Sinkhorn-Knopp in the log domain (:func:`sinkhorn_log`): the
potentials are kept as logarithms, so ``exp(-lambda D)`` never underflows (OTLA's
original ``P ** 25`` does, and hides the NaNs with ``nansum``). The iterates are
POT's ``ot.sinkhorn_log`` (``reg = 1 / lambda``): ``v`` update, then ``u``, the marginal
checked every 10th iteration; ``official_solver=True`` runs the official
``sinkhorn_solver``'s order instead (``v`` starts uniform, then ``u``, then ``v``): the
same limit, but at the official tolerance another plan, the official labels. To keep an
iteration a matrix-vector product instead of two log-sum-exps over N x K, the potentials are absorbed into a rescaled kernel
(Schmitzer, SIAM J. Sci. Comput. 2019, Alg. 2); any half-step that would overflow or
underflow is redone exactly with log-sum-exp.

Differences from the official SALCR code (all optional or documented):

- stopping: the official criterion, ``sum_k |b_k / b'_k - 1| < tol`` every 10th
  iteration, which equals ``sum_k |K * colsum_k - 1|`` (the clusters' relative marginal
  errors, summed) with ``tol = 0.1``; at most ``max_iter`` iterations (official: 500,
  here 1000 by default);
- the official code first relabels every instance to its own modality's nearest
  (un-normalised) centroid, which is not in the paper: ``intra_relabel=True``;
- prototypes: the paper uses the memory prototypes, the code the mean of the (CMFP-
  propagated) features, un-normalised (``normalize_centroids=False``), as here;
- CMFP(tr) is on when ``k_tr`` is set (SALCR: 30 SYSU, 8 RegDB), off by default.

Outliers (label -1) take no part and get -1 in both spaces. A modality without clusters
gives no cross labels (:func:`uvireid.associations.checks.empty_result`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uvireid.associations.checks import (
    build,
    check_finite,
    cluster_means,
    empty_result,
    prepare,
)
from uvireid.associations.refine import check_k_tr, cmfp_tr
from uvireid.errors import ConfigError, FeatureFileError
from uvireid.registry import ASSOCIATORS
from uvireid.types import CrossLabels

__all__ = ["SinkhornResult", "sinkhorn_log", "transport_plan", "OTLADual", "squared_distances"]

logger = logging.getLogger(__name__)

#: absorb the scalings into the kernel when a log-scaling exceeds this (e^50 ~ 5e21)
_ABSORB = 50.0


@dataclass
class SinkhornResult:
    """Log-domain Sinkhorn output: ``plan = exp(-lambda C + log_u[:, None] + log_v)``.

    Attributes:
        log_u: (N,) float64 row potentials; log_v: (K,) column potentials.
        n_iter: iterations run; err: last marginal error checked; converged: the stopping rule held (:func:`sinkhorn_log`).
    """

    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: int
    err: float
    converged: bool


def sinkhorn_log(
    cost: torch.Tensor,
    lambda_ot: float = 5.0,
    *,
    max_iter: int = 1000,
    tol: float = 0.1,
    check_every: int = 10,
    official_order: bool = False,
) -> SinkhornResult:
    """Entropic OT with uniform marginals, solved by Sinkhorn-Knopp in the log domain.

    Solves ``min <Q, C> - (1/lambda) H(Q)`` s.t. ``Q 1 = 1/N``, ``Q^T 1 = 1/K`` (OTLA,
    ECCV 2022; SALCR Eq. 4), in the log domain (potentials absorbed when the scalings
    leave a safe range). Two orders of the same iteration, with the same limit:

    - default: ``ot.sinkhorn_log(a, b, C, reg=1/lambda)``'s iterates from zero potentials,
      ``v = b / (K^T u)`` then ``u = a / (K v)``, stopping when the marginal error is
      ``< tol``. At the official tolerance (0.1) its plan is the closer to the exact
      solution of Eq. 4 (audits of session 16);
    - ``official_order=True``: SALCR's official ``sinkhorn_solver``
      (``shared/notes/salcr_reference.md`` Sec. 5.1): ``v`` starts uniform (``b``), then
      ``u``, then ``v``, stopping at ``<= tol``. At tol 0.1 it stops on the official
      code's plan, so its labels are the official ones (in POT's order 28 of 200 random
      problems had a label that differs). On the demo it trained 1.6-4.6 mAP lower over
      three seeds (benchmarks/RESULTS.md, session 16).

    Args:
        cost: (N, K) float tensor, finite (float64 is used inside).
        lambda_ot: inverse entropic regularisation lambda (SALCR: 5; OTLA: 25).
        max_iter: iteration cap (a warning is logged if it is reached).
        tol: stop when ``sum_k |K * colsum_k - 1|``, the clusters' relative marginal
            errors summed, is ``< tol`` (default order: of the plan after the row update,
            whose rows are exact) or ``<= tol`` (official order: of the plan before the
            column update, whose columns are then exact). SALCR's official
            ``sinkhorn_solver`` stops at 0.1 (its ``sum |b / b_new - 1|`` is this sum).
        check_every: check the marginal every this many iterations (POT: 10).
        official_order: iterate and stop as the official solver does (above).

    Returns:
        :class:`SinkhornResult` with the potentials (the plan is never materialised here;
        :func:`transport_plan` builds it).

    Raises:
        FeatureFileError: the cost holds NaN or inf.
        ConfigError: empty cost, ``lambda_ot`` not in (0, inf), ``tol`` not finite and
            >= 0, ``max_iter`` or ``check_every`` not a whole number >= 1.
    """
    n, k = cost.shape
    if n == 0 or k == 0:
        raise ConfigError(f"sinkhorn_log: empty cost matrix {tuple(cost.shape)}")
    from uvireid.rerank.inputs import check_k

    # whole counts >= 1 (audit NG: int(inf) escaped as OverflowError, 2.5 was cut to 2)
    max_iter = check_k(max_iter, "max_iter", "sinkhorn_log")
    check_every = check_k(check_every, "check_every", "sinkhorn_log")
    if not 0 < lambda_ot < math.inf or not 0 <= tol < math.inf:
        # a NaN tolerance never stops, an infinite one at once
        raise ConfigError(
            f"sinkhorn_log: need lambda_ot > 0 and finite (inf: NaN potentials) and a finite "
            f"tol >= 0; got {lambda_ot}, {tol}"
        )
    check_finite(cost, "sinkhorn_log", "the cost matrix")
    mr = -float(lambda_ot) * cost.double()
    log_a, log_b = -math.log(n), -math.log(k)
    f = mr.new_zeros(n)  # absorbed log potentials
    # official: v starts uniform (b), absorbed into g; POT's: zero potentials
    g = mr.new_full((k,), log_b if official_order else 0.0)
    kern = torch.exp(mr + g[None, :])  # exp(mr + f + g)
    u = mr.new_ones(n)  # scalings on top of the absorbed potentials
    v = mr.new_ones(k)

    def absorb() -> torch.Tensor:
        return torch.exp(mr + f[:, None] + g[None, :])

    err, it = math.inf, 0

    def extreme(x: torch.Tensor) -> bool:
        return (
            not bool(torch.isfinite(x).all())
            or float(x.max()) > math.exp(_ABSORB)
            or float(x.min()) < math.exp(-_ABSORB)
        )

    def absorb_v() -> None:
        """After a v-update whose scalings left the safe range: the exact log-domain
        update with u absorbed into f, the scalings reset."""
        nonlocal f, g, u, v, kern
        if extreme(v):
            f = f + torch.log(u)
            g = log_b - torch.logsumexp(mr + f[:, None], dim=0)
            u, v = torch.ones_like(u), torch.ones_like(v)
            kern = absorb()

    for it in range(int(max_iter)):
        check = it % int(check_every) == 0
        if not official_order:  # POT: v-update first, v = b / (K^T u)
            v = math.exp(log_b) / (kern.T @ u)
            absorb_v()
        # u-update: u = a / (K v)
        u = math.exp(log_a) / (kern @ v)
        if extreme(u):
            g = g + torch.log(v)
            f = log_a - torch.logsumexp(mr + g[None, :], dim=1)
            u, v = torch.ones_like(u), torch.ones_like(v)
            kern = absorb()
        if official_order:
            # then v, measuring sum |v / v_new - 1| (= sum_k |K colsum_k - 1| of the plan
            # before the update) every check_every iterations, as sinkhorn_solver does
            v_new = math.exp(log_b) / (kern.T @ u)
            if check:
                err = float((v / v_new - 1.0).abs().sum())
            v = v_new
            absorb_v()
            if check and err <= tol:
                break
        elif check:
            colsum = v * (kern.T @ u)
            err = float((colsum * k - 1.0).abs().sum())
            if err < tol:
                break
    log_u = f + torch.log(u)
    log_v = g + torch.log(v)
    converged = err <= tol if official_order else err < tol
    if not converged:
        logger.warning(
            "sinkhorn_log: not converged after %d iterations (marginal error %.2e >= tol "
            "%.1e); raise max_iter or lower lambda_ot",
            it + 1,
            err,
            tol,
        )
    return SinkhornResult(log_u, log_v, it + 1, err, converged)


def transport_plan(cost: torch.Tensor, lambda_ot: float, result: SinkhornResult) -> torch.Tensor:
    """(N, K) float64 plan ``exp(-lambda C + log_u + log_v)`` of a :func:`sinkhorn_log` run."""
    return torch.exp(-float(lambda_ot) * cost.double() + result.log_u[:, None] + result.log_v)


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, K) ``||x_i - c_k||^2`` in the features' dtype (one matrix product), >= 0."""
    c = c.to(x.dtype)
    d = (x * x).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)
    return d.clamp_(min=0)


@ASSOCIATORS.register("otla_dual")
class OTLADual:
    """Dual optimal-transport label assignment (OTLA, ECCV 2022; SALCR DAGL, Eq. 4).

    Every clustered instance gets a label in the other modality's label space: the
    argmax of its row of the entropic OT plan from the instances of its modality to the
    other modality's cluster prototypes (cost = squared Euclidean distance, uniform
    marginals, log-domain Sinkhorn). The uniform marginals spread a modality's instances
    over every prototype of the other: with fewer clustered instances than prototypes
    the labels are what that equipartition forces (one instance: a uniform plan, its
    label a floating-point tie), as in the specification and the official code.

    Args:
        lambda_ot: inverse entropic regularisation (SALCR: 5).
        max_iter: Sinkhorn iteration cap.
        tol: Sinkhorn tolerance on the clusters' summed relative marginal errors (0.1, as
            the official code).
        k_tr: CMFP(tr) neighbours (SALCR: 30 SYSU-MM01, 8 RegDB); None = no refinement.
        intra_relabel: also relabel each instance to its own modality's nearest
            (inner-product, un-normalised) centroid, as the official SALCR code does.
        normalize_centroids: L2-normalise the prototypes of the cross costs (the official
            code does not; ``intra_relabel`` keeps to the un-normalised centroids).
        official_solver: run Sinkhorn in the official solver's order and stopping rule
            (:func:`sinkhorn_log` ``official_order``): the official labels at tol 0.1;
            off: the order whose plan is the closer to Eq. 4's solution.
        device: where to compute (default: the visible features' device).

    ``associate(feats_v, labels_v, feats_r, labels_r) -> CrossLabels`` with
    ``unified=False``; ``matches`` lists the (visible, infrared) cluster pairs that some
    instance's two labels join.
    """

    def __init__(
        self,
        lambda_ot: float = 5.0,
        max_iter: int = 1000,
        tol: float = 0.1,
        k_tr: int | None = None,
        intra_relabel: bool = False,
        normalize_centroids: bool = False,
        official_solver: bool = False,
        device: str | None = None,
    ):
        self.lambda_ot = lambda_ot
        self.official_solver = official_solver
        self.max_iter = max_iter
        self.tol = tol
        self.k_tr = k_tr
        self.intra_relabel = intra_relabel
        self.normalize_centroids = normalize_centroids
        self.device = device

    def __repr__(self) -> str:
        return f"OTLADual(lambda_ot={self.lambda_ot}, k_tr={self.k_tr})"

    def _solve(self, x: torch.Tensor, protos: torch.Tensor) -> tuple[np.ndarray, SinkhornResult]:
        cost = squared_distances(x, protos)
        if not bool(torch.isfinite(cost).all()):  # finite features (checked): an overflow
            top = float(torch.linalg.vector_norm(x.double(), dim=1).max())
            raise FeatureFileError(
                f"otla_dual: the squared distances overflow {x.dtype} (feature norms reach "
                f"{top:.3g}); L2-normalise the features (as the engine's are) or pass "
                f"float64 ones"
            )
        res = sinkhorn_log(
            cost,
            self.lambda_ot,
            max_iter=self.max_iter,
            tol=self.tol,
            official_order=self.official_solver,
        )
        # argmax over k of the plan row = argmax of (-lambda C + log_v): log_u is constant
        score = -float(self.lambda_ot) * cost.double() + res.log_v[None, :]
        return score.argmax(1).cpu().numpy(), res

    def _check_params(self) -> int | None:
        """Refuse settings no input could make work (also before a run starts: see
        :func:`uvireid.engine.runner.check_parts`). Returns the checked ``k_tr``."""
        from uvireid.rerank.inputs import check_k, check_positive

        check_positive(self.lambda_ot, "lambda_ot", "otla_dual")
        check_k(self.max_iter, "max_iter", "otla_dual")  # numpy integers too, no bool
        check_positive(self.tol, "tol", "otla_dual")
        return check_k_tr(self.k_tr, "otla_dual")

    def associate(self, feats_v: Any, labels_v: Any, feats_r: Any, labels_r: Any) -> CrossLabels:
        """Cross labels of every instance (visible first, then infrared); see the class."""
        k_tr = self._check_params()
        v, r = prepare(feats_v, labels_v, feats_r, labels_r, "otla_dual", self.device)
        info: dict = {"associator": "otla_dual", "lambda_ot": self.lambda_ot, "k_tr": k_tr}
        if v.k == 0 or r.k == 0:
            return empty_result(v, r, "otla_dual", info)
        fv, fr = v.feats, r.feats
        if k_tr is not None:
            fv, fr = cmfp_tr(fv, fr, k_tr, keep_v=v.kept, keep_r=r.kept)
        cv = cluster_means(fv, v.compact, v.k)
        cr = cluster_means(fr, r.compact, r.k)
        own_v, own_r = v.labels, r.labels
        if self.intra_relabel:  # the un-normalised centroids, as the official code
            own_v = v.labels.copy()
            own_r = r.labels.copy()
            own_v[v.kept] = v.ids[(fv[v.kept].double() @ cv.T).argmax(1).cpu().numpy()]
            own_r[r.kept] = r.ids[(fr[r.kept].double() @ cr.T).argmax(1).cpu().numpy()]
        if self.normalize_centroids:  # the prototypes of the cross costs only
            cv = torch.nn.functional.normalize(cv, dim=1)
            cr = torch.nn.functional.normalize(cr, dim=1)
        r_of_v = np.full(v.n, -1, dtype=np.int64)
        v_of_r = np.full(r.n, -1, dtype=np.int64)
        lab_vr, res_vr = self._solve(fv[v.kept], cr)
        lab_rv, res_rv = self._solve(fr[r.kept], cv)
        r_of_v[v.kept] = r.ids[lab_vr]
        v_of_r[r.kept] = v.ids[lab_rv]
        matches = np.concatenate(
            [
                np.stack([own_v[v.kept], r_of_v[v.kept]], 1),
                np.stack([v_of_r[r.kept], own_r[r.kept]], 1),
            ]
        )
        info.update(
            {
                "iterations": (res_vr.n_iter, res_rv.n_iter),
                "marginal_error": (res_vr.err, res_rv.err),
                "converged": res_vr.converged and res_rv.converged,
                "intra_relabel": self.intra_relabel,
            }
        )
        out = build(v, r, r_of_v, v_of_r, matches, info, own_v=own_v, own_r=own_r)
        logger.info(
            "otla_dual: %d visible / %d infrared clusters, Sinkhorn %s iterations, %d "
            "cluster pairs linked",
            v.k,
            r.k,
            info["iterations"],
            len(out.matches),
        )
        return out
