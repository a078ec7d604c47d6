"""Analytic accuracy ceilings of a preference dataset whose generator is known. Pure numpy, no I/O.

Every ceiling is the *expected* accuracy of one predictor that picks a side of each target pair.
A row's expected accuracy is the true user's probability of the picked side: ``p_true`` when the
predictor picks ``chosen``, ``1 - p_true`` when it picks ``rejected``, 0.5 on an exact tie (a coin
flip). ``p_true`` is the row's ``p_chosen``: the probability that this user prefers ``chosen``.

The *population* is a finite set of user weight vectors ``s = 1..S`` with prior weights ``prior[s]``:
the user types themselves for discrete worlds (exact), or a Monte-Carlo sample of the prior for
continuous ones (importance weighting over prior samples). Each generator hands over, per row:

  p_true           (R,)    P(this user prefers chosen)
  p_population     (R, S)  P(population member s prefers chosen)
  context_loglik   (R, S)  log P(the row's context labels | member s)   (-inf allowed: impossible)

Predictors (Bradley–Terry background: Bradley & Terry 1952; personalized ceilings as in VPL, Poddar et
al. 2024, and PLUS, Nam et al. 2025):

  oracle           knows the user's weights: picks the side with p > 0.5    -> mean max(p, 1 - p)
  user_agnostic    the best non-personalized model: picks the population-majority side,
                   sign(sum_s prior_s p_s - 0.5)
  bayes_n_context  posterior over the population given the row's context labels, picks the side the
                   posterior predictive favours: sign(sum_s post_s p_s - 0.5). With no context it
                   equals user_agnostic; with an informative context it approaches oracle.

A split's ceiling is the mean of the per-row values over its rows: exact in the target label, and a
sample over the contexts the generator drew (``bayes_survey_accuracy`` is exact in both, for surveys).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

TIE_TOL = 1e-12  # predictive probabilities this close to 1/2 count as a tie (coin flip)
SUBSETS = ("all", "contested", "agreed")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-safe."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def expected_accuracy(p_true: np.ndarray, p_predicted: np.ndarray) -> np.ndarray:
    """Per row: expected accuracy of picking ``chosen`` iff ``p_predicted > 1/2`` (tie: 0.5)."""
    p_true, p_predicted = np.asarray(p_true, float), np.asarray(p_predicted, float)
    pick_chosen = p_predicted > 0.5 + TIE_TOL
    pick_rejected = p_predicted < 0.5 - TIE_TOL
    return np.where(pick_chosen, p_true, np.where(pick_rejected, 1.0 - p_true, 0.5))


def oracle_accuracy(p_true: np.ndarray) -> np.ndarray:
    """Per row: the oracle knows ``p_true`` and picks its majority side -> max(p, 1 - p)."""
    p_true = np.asarray(p_true, float)
    return np.maximum(p_true, 1.0 - p_true)


def population_prob(p_population: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Per row: P(a random population member prefers chosen) = sum_s prior_s p_s."""
    prior = np.asarray(prior, float)
    return np.asarray(p_population, float) @ (prior / prior.sum())


def posterior(prior: np.ndarray, context_loglik: np.ndarray) -> np.ndarray:
    """Per row: posterior over the population given the context, prior_s L_s / sum (rows sum to 1)."""
    with np.errstate(divide="ignore"):
        logpost = np.log(np.asarray(prior, float))[None, :] + np.asarray(context_loglik, float)
    logpost = logpost - logpost.max(axis=1, keepdims=True)  # stable; -inf stays -inf (impossible member)
    post = np.exp(logpost)
    return post / post.sum(axis=1, keepdims=True)


def posterior_predictive(p_population: np.ndarray, prior: np.ndarray, context_loglik: np.ndarray) -> np.ndarray:
    """Per row: P(this user prefers chosen | context labels) = sum_s post_s p_s."""
    return np.sum(posterior(prior, context_loglik) * np.asarray(p_population, float), axis=1)


def context_loglik(p_context: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """log-likelihood of labelled context pairs per member: sum_i log p_s(chosen_i over rejected_i).

    ``p_context`` is (R, n, S): P(member s prefers the *chosen* side of context pair i of row r).
    ``mask`` (R, n) marks real pairs when rows have contexts of different lengths.
    """
    with np.errstate(divide="ignore"):
        logp = np.log(np.asarray(p_context, float))
    if mask is not None:
        logp = np.where(np.asarray(mask, bool)[:, :, None], logp, 0.0)
    return logp.sum(axis=1)


def row_ceilings(
    p_true: np.ndarray, p_population: np.ndarray, prior: np.ndarray, ctx_loglik: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per-row expected accuracy of the three predictors (``bayes_n_context`` absent if no loglik)."""
    out = {
        "oracle": oracle_accuracy(p_true),
        "user_agnostic": expected_accuracy(p_true, population_prob(p_population, prior)),
    }
    if ctx_loglik is not None:
        out["bayes_n_context"] = expected_accuracy(p_true, posterior_predictive(p_population, prior, ctx_loglik))
    return out


def summarize(per_row: Mapping[str, np.ndarray], contested: np.ndarray) -> dict[str, dict]:
    """Mean per-row accuracies over all / contested / agreed rows, plus row counts ``n``.

    Missing predictors and empty subsets are ``None`` (JSON null), never NaN.
    """
    contested = np.asarray(contested, bool)
    masks = {"all": np.ones_like(contested), "contested": contested, "agreed": ~contested}
    table = {}
    for subset, mask in masks.items():
        n = int(mask.sum())
        entry = {
            name: (float(np.mean(np.asarray(per_row[name])[mask])) if (name in per_row and n) else None)
            for name in ("oracle", "user_agnostic", "bayes_n_context")
        }
        entry["n"] = n
        table[subset] = entry
    return table


def bayes_survey_accuracy(p_survey: np.ndarray, p_target: np.ndarray, prior: np.ndarray) -> float:
    """Exact Bayes ceiling with a fixed survey context, by enumerating every survey answer vector.

    ``p_survey`` (n, T): P(type t prefers side a of survey pair i); ``p_target`` (M, T): the same for
    M target pairs; ``prior`` (T,). The user is drawn from the prior, answers every survey pair, then
    is asked each target pair; the predictor picks the posterior-predictive majority side. Returns the
    expected accuracy averaged over users, answers and the M targets. Cost 2^n * T * M.
    """
    p_survey, p_target = np.asarray(p_survey, float), np.asarray(p_target, float)
    prior = np.asarray(prior, float) / np.sum(prior)
    n = p_survey.shape[0]
    answers = np.array(list(itertools.product((1.0, 0.0), repeat=n))).reshape(2**n, n)  # 1 = side a
    with np.errstate(divide="ignore"):
        lik = np.exp(answers @ np.log(p_survey) + (1 - answers) @ np.log1p(-p_survey))  # (2^n, T)
    joint = lik * prior[None, :]  # P(answers, type)
    predictive = (joint / joint.sum(axis=1, keepdims=True)) @ p_target.T  # (2^n, M)
    total = 0.0
    for t in range(p_target.shape[1]):  # accuracy if the true type is t, weighted by P(answers, t)
        total += np.sum(joint[:, t : t + 1] * expected_accuracy(p_target[None, :, t], predictive))
    return float(total / p_target.shape[0])
