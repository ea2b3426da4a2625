"""Independent float64 references of the optimizers, written from the papers' formulas (not
from the package): each takes a weight and a list of gradients and returns the weights after
each step plus the final state."""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def nsgda(p, grads, lr, momentum, eps, weight_decay=0.0, decay=None):
    p, m = p.to(F64).clone(), torch.zeros_like(p, dtype=F64)
    for t, g in enumerate(grads, 1):
        p = decay(p) if decay else p
        m = momentum * m + (1 - momentum) * g.to(F64)
        m_hat = m / (1 - momentum**t)
        p = p * (1 - lr * weight_decay)
        p = p - lr * m_hat / (torch.linalg.vector_norm(m_hat) + eps)
    return p, {"momentum_buffer": m}


def adalo(p, grads, losses, lr, beta1, beta2, kappa, eps, weight_decay, mode, decay=None):
    p, m, e = p.to(F64).clone(), torch.zeros_like(p, dtype=F64), 0.0
    for g, loss in zip(grads, losses):
        p = decay(p) if decay else p
        m = beta1 * m + (1 - beta1) * g.to(F64)
        level = (math.tanh(-math.log1p(loss) / 2) + 1) / 2
        e = beta2 * e + (1 - beta2) * level
        size = e if mode == "adversarial" else 1 - e
        lr_t = lr * max(size / kappa, eps)
        p = p * (1 - lr_t * weight_decay) - lr_t * m
    return p, {"exp_avg": m, "loss_ema": torch.tensor(e, dtype=F64)}


def _rms(x):
    return math.sqrt(float((x**2).sum()) / max(x.numel(), 1))


def adafactor(p, grads, lr=1e-2, eps1=1e-30, eps2=1e-3, d=1.0, decay_rate=-0.8,
              relative_step=True, scale_parameter=True, weight_decay=0.0, decay=None):
    """The paper's Algorithm with row/column *sums* (R 1_m, 1_n^T C) and V = R C / (1^T R)."""
    p = p.to(F64).clone()
    factored = p.dim() >= 2
    r = torch.zeros(p.shape[:-1], dtype=F64) if factored else None
    c = torch.zeros(p.shape[:-2] + p.shape[-1:], dtype=F64) if factored else None
    v = None if factored else torch.zeros_like(p, dtype=F64)
    for t, g in enumerate(grads, 1):
        p = decay(p) if decay else p
        g = g.to(F64)
        b2 = 1 - t**decay_rate
        rho = min(lr, 1 / math.sqrt(t)) if relative_step else lr
        alpha = max(eps2, _rms(p)) * rho if scale_parameter else rho
        g2 = g * g + eps1
        if factored:
            r = b2 * r + (1 - b2) * g2.sum(-1)
            c = b2 * c + (1 - b2) * g2.sum(-2)
            vhat = r.unsqueeze(-1) * c.unsqueeze(-2) / r.sum(-1)[..., None, None]
        else:
            v = b2 * v + (1 - b2) * g2
            vhat = v
        u = g / vhat.sqrt()
        u = u / max(1.0, _rms(u) / d)
        p = p * (1 - lr * weight_decay) - alpha * u
    state = {"exp_avg_sq_row": r / p.shape[-1], "exp_avg_sq_col": c / p.shape[-2]} if factored \
        else {"exp_avg_sq": v}
    return p, state


def _square(n):
    k = max(i for i in range(1, int(math.sqrt(n)) + 2) if n % i == 0 and i * i <= n)
    return n // k, k


def _factor(a):
    r, c = a.sum(1), a.sum(0)
    if a.shape[0] < a.shape[1]:
        r = r / r.sum() if r.sum() != 0 else r
    else:
        c = c / c.sum() if c.sum() != 0 else c
    return r, c


def smmf(p, grads, lr=1e-3, beta=0.9, eps=1e-8, decay_rate=-0.5, growth_rate=0.999,
         weight_decay=0.0, decay=None):
    shape = _square(p.numel())
    p = p.to(F64).clone()
    sign = torch.ones(shape, dtype=torch.bool)
    rm, cm = torch.zeros(shape[0], dtype=F64), torch.zeros(shape[1], dtype=F64)
    rv, cv = rm.clone(), cm.clone()
    for t, g in enumerate(grads, 1):
        p = decay(p) if decay else p
        g = g.to(F64).reshape(shape)
        m = torch.where(sign, 1.0, -1.0) * torch.outer(rm, cm)
        v = torch.outer(rv, cv)
        bm, bv = beta * growth_rate ** (t - 1), 1 - t**decay_rate
        m = bm * m + (1 - bm) * g
        v = bv * v + (1 - bv) * g * g
        p = p * (1 - lr * weight_decay) - lr * (m / (v.sqrt() + eps)).reshape(p.shape)
        sign = m >= 0
        (rm, cm), (rv, cv) = _factor(m.abs()), _factor(v)
    return p, {"row_m": rm, "col_m": cm, "row_v": rv, "col_v": cv, "sign": sign}


def sm3(p, grads, lr=0.1, momentum=0.9, eps=1e-30, weight_decay=0.0, decay=None):
    """SM3-II by brute force over index tuples: nu(i) = min_d acc_d[i_d] + g(i)^2."""
    p = p.to(F64).clone()
    shape = tuple(p.shape)
    covers = [torch.zeros(n, dtype=F64) for n in shape] if p.dim() >= 2 else None
    full = None if covers else torch.zeros(shape, dtype=F64)
    m = torch.zeros(shape, dtype=F64)
    for g in grads:
        p = decay(p) if decay else p
        g = g.to(F64)
        if covers:
            nu = torch.empty(shape, dtype=F64)
            for idx in torch.cartesian_prod(*[torch.arange(n) for n in shape]).tolist():
                smallest = min(float(a[i]) for a, i in zip(covers, idx))
                nu[tuple(idx)] = smallest + float(g[tuple(idx)]) ** 2
            covers = [
                torch.tensor([float(nu.select(d, i).max()) for i in range(n)], dtype=F64)
                for d, n in enumerate(shape)
            ]
        else:
            full = full + g * g
            nu = full
        u = g / (nu + eps).sqrt()
        m = momentum * m + (1 - momentum) * u if momentum else u
        p = p * (1 - lr * weight_decay) - lr * m
    return p, {"covers": covers, "full": full}


def huber_explicit(tau, delta=None, scale=1.5, beta=0.99):
    """The explicit Huber rule ``p - tau*clip(p, -d, d)`` as a pre-step hook. ``delta=None``: the
    adaptive ``d = scale*mu``, ``mu_1 = mean|p_1|``, ``mu = lerp(mu, mean|p|, 1-beta)``."""
    mu = []

    def hook(p):
        if delta is not None:
            d = delta
        else:
            a = float(p.abs().mean())
            mu.append(a if not mu else beta * mu[-1] + (1 - beta) * a)
            d = scale * mu[-1]
        return p - tau * p.clamp(-d, d)

    return hook


def adamomentum(p, grads, lr, betas, eps=1e-8, weight_decay=0.0, decay=None):
    """AdaMomentum (arXiv 2106.11514, Algorithm 1): ``v`` is the EMA of ``m**2``, ``eps`` added to
    ``v`` every step, no ``eps`` in the denominator."""
    (b1, b2), p = betas, p.to(F64).clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        p = decay(p) if decay else p
        m = b1 * m + (1 - b1) * g.to(F64)
        v = b2 * v + (1 - b2) * m * m + eps
        p = p * (1 - lr * weight_decay)
        p = p - lr * (m / (1 - b1**t)) / torch.sqrt(v / (1 - b2**t))
    return p, {"exp_avg": m, "exp_avg_sq": v}


def gl_weight(alpha, j):
    """``w_j`` of FCAdam_G-L's recursion ``w_j = (1 - (alpha+1)/(j+1)) w_{j-1}``, ``w_0 = 1``, in
    closed form: ``prod_{i=1..j} (i - alpha)/(i + 1) = Gamma(j+1-alpha)/(Gamma(1-alpha) (j+1)!)``
    (0 for ``alpha = 1``)."""
    if alpha == 1.0:
        return 0.0
    return math.gamma(j + 1 - alpha) / (math.gamma(1 - alpha) * math.factorial(j + 1))


def fcadam(p, grads, lr, betas, eps=1e-8, weight_decay=0.0, alpha=0.9, history=10, drop=True,
           seed=0, decay=None, dropped=None):
    """FCAdam_G-L (Zhou, Zhao & Huang 2023): Adam on ``D_t = g_t + sum_j c_j w_j g_{t-j}``,
    ``j = 1..history``; ``dropped[t]`` is the ``j`` with ``c_j = 0`` at step ``t`` (none: all 1)."""
    (b1, b2), p = betas, p.to(F64).clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    gs = [g.to(F64) for g in grads]
    for t in range(1, len(gs) + 1):
        p = decay(p) if decay else p
        d = gs[t - 1].clone()
        for j in range(1, min(history, t - 1) + 1):
            if not (drop and dropped and dropped.get(t) == j):
                d = d + gl_weight(alpha, j) * gs[t - 1 - j]
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        p = p * (1 - lr * weight_decay)
        p = p - lr * (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps)
    return p, {"exp_avg": m, "exp_avg_sq": v}
def amos(p, grads, lr=1e-2, beta=0.999, eta=None, weight_decay=0.0, cautious_decay=False,
         maximize=False, decay=None):
    """Amos (arXiv 2210.11693, Algorithm 1) on one tensor: shared v = EMA of mean(g^2), decay
    gamma = xi^2 * mean(g^2)/v_hat / sqrt(1 + sqrt(xi)*b/4), schedule d = 1/(1 + sqrt(xi*eta)*b/4),
    p -= d*(xi*eta*g/sqrt(v_hat) + (gamma/2 + extra_l2)*p [where g*p >= 0 if cautious]),
    b += gamma*(1 + b). eta: 1/sqrt(fan_in) for 2+ dims, else 1 (adamhd's default)."""
    p = p.to(F64).clone()
    if eta is None:
        eta = 1.0 if p.dim() < 2 or p.numel() == 0 else 1.0 / math.sqrt(p.numel() // p.shape[0])
    xi, v, b = lr, 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        p = decay(p) if decay else p
        g = -g.to(F64) if maximize else g.to(F64)
        g2 = float((g * g).mean()) if g.numel() else 0.0
        v = beta * v + (1 - beta) * g2
        r = (1 - beta**t) / max(v, 2.0**-125)
        gamma = xi**2 * r * g2 * (1 + 0.25 * math.sqrt(xi) * b) ** -0.5
        d = 1 / (1 + 0.25 * math.sqrt(xi * eta) * b)
        pull = (0.5 * gamma + weight_decay) * p
        if cautious_decay:
            pull = pull * (g * p >= 0)
        p = p - d * (xi * eta * math.sqrt(r) * g + pull)
        b = b + gamma * (1 + b)
    return p, {"amos_v": v, "amos_b": b}
