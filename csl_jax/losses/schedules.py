"""The Adaptive FNC threshold schedule rho(step) (paper, "Adaptive False Negative Cancellation").

Early features are poor, so similarity-based detections are unreliable: rho starts high (few cancellations)
and decreases as training goes on. The paper's best setting is rho = 0.99 -> 0.7 (Table 4); a fixed rho = 0.9
is its baseline. The result is an optax schedule (step -> f32[] rho), usable inside a jitted train step.
"""
import optax

KINDS = ("cosine", "linear", "constant")


def rho_schedule(rho_initial=0.99, rho_final=0.7, *, total_steps: int, kind: str = "cosine",
                 warmup_steps: int = 0) -> optax.Schedule:
  """Schedule of the cancellation threshold rho.

  rho stays at rho_initial for the first warmup_steps, then moves to rho_final over the remaining
  total_steps - warmup_steps ("cosine": half-cosine; "linear": straight line) and stays there after
  total_steps. "constant" needs rho_initial == rho_final (the paper's fixed-threshold baseline).

  Args:
    rho_initial, rho_final: thresholds on cosine similarity (values > 1 cancel nothing).
    total_steps: training steps; rho(total_steps) == rho_final.
    kind: one of "cosine", "linear", "constant".
    warmup_steps: steps to hold rho_initial before decaying, 0 <= warmup_steps < total_steps.

  Returns:
    An optax.Schedule: int step (Python or traced) -> scalar rho, monotone between the two endpoints.
  """
  if kind not in KINDS:
    raise ValueError(f"rho_schedule: unknown kind {kind!r}; expected one of {KINDS}.")
  if not isinstance(total_steps, int) or total_steps <= 0:
    raise ValueError(f"rho_schedule: total_steps must be a positive int, got {total_steps!r}.")
  if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
    raise ValueError(f"rho_schedule: need 0 <= warmup_steps < total_steps ({total_steps}), "
                     f"got warmup_steps={warmup_steps!r}.")
  if kind == "constant":
    if rho_initial != rho_final:
      raise ValueError(f"rho_schedule: kind='constant' holds one threshold, but rho_initial={rho_initial} != "
                       f"rho_final={rho_final}. Set both to the fixed rho, or use kind='cosine'/'linear'.")
    return optax.constant_schedule(rho_initial)

  decay_steps = total_steps - warmup_steps
  if kind == "linear":
    decay = optax.linear_schedule(rho_initial, rho_final, decay_steps)
  else:
    # Cosine from 1 to 0, mapped affinely onto [rho_final, rho_initial]: exact endpoints for any sign of
    # the values, unlike optax's alpha = rho_final / rho_initial parameterisation.
    unit = optax.cosine_decay_schedule(1.0, decay_steps)

    def decay(step):
      return rho_final + (rho_initial - rho_final) * unit(step)

  if warmup_steps == 0:
    return decay
  return optax.join_schedules([optax.constant_schedule(rho_initial), decay], [warmup_steps])
