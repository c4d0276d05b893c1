"""P_drop (Eq. 3) and gap closed (Table 4) reproduce the paper's own printed numbers.

Inputs and expected values are copied from the paper text (Tables 1 and 4), the independent reference.
The paper prints drops rounded to whole percent and computes ↑x% from those rounded drops, so we do the
same and allow up to 2 points for its rounding of the result.
"""
import pytest

from csl_jax.analysis import report

# Table 4 drops (%) for columns FGSM 8/255, FGSM 16/255, AutoAttack 1/255, AutoAttack 2/255.
SUPCON = (59, 67, 74, 88)
SIMCLR = (71, 86, 85, 95)
# row: (drops, printed ↑ gap closed %); None marks the three cells that contradict the paper's own
# inputs by > 3 points whichever rounding is used (Fixed ρ FGSM-16: 47 vs printed 53; Fixed ρ AA-1:
# 36 vs 25; ρ 0.99→0.7 AA-1: 55 vs 58), so they cannot serve as a reference.
TABLE4 = {
    "SimCLR + FNC": ((70, 83, 85, 93), (8, 16, 1, 27)),
    "SimCLR + IFND": ((69, 80, 84, 93), (16, 32, 9, 29)),
    "Fixed threshold 0.9": ((68, 77, 81, 92), (25, None, None, 43)),
    "Adaptive 0.9 -> 0.5": ((66, 76, 79, 90), (42, 53, 55, 70)),
    "Adaptive 0.99 -> 0.7": ((64, 73, 79, 90), (58, 68, None, 72)),
}
CELLS = [(row, col) for row, (_, closed) in TABLE4.items() for col in range(4) if closed[col] is not None]


@pytest.mark.parametrize("row,col", CELLS)
def test_gap_closed_reproduces_table4(row, col):
  drops, printed = TABLE4[row]
  closed = report.gap_closed(drops[col] / 100, SIMCLR[col] / 100, SUPCON[col] / 100)
  assert abs(100 * closed - printed[col]) <= 2.0, (row, col, 100 * closed, printed[col])


def test_gap_closed_headline_cell_and_anchors():
  # FGSM 8/255, Adaptive FNC (0.99 → 0.7): (71 − 64) / (71 − 59) = 58.3 %, printed ↑58%.
  assert round(100 * report.gap_closed(0.64, 0.71, 0.59)) == 58
  assert report.gap_closed(0.71, 0.71, 0.59) == pytest.approx(0.0)
  assert report.gap_closed(0.59, 0.71, 0.59) == pytest.approx(1.0)


# Table 1 (CIFAR-10): clean accuracy, then (robust accuracy, printed ↓ drop %) per attack column.
TABLE1 = {
    "Supervised (CE)": (95.4, [(29.6, 69), (20.1, 79), (31.2, 67), (15.7, 84), (16.5, 83), (18.6, 81)]),
    "SupCon": (95.5, [(38.8, 59), (31.8, 67), (34.2, 64), (18.4, 81), (20.7, 78), (24.3, 75)]),
    "SimCLR": (92.7, [(26.8, 71), (13.4, 86), (20.9, 77), (8.3, 91), (11.5, 88), (13.7, 85)]),
}


@pytest.mark.parametrize("row", list(TABLE1))
def test_p_drop_reproduces_table1(row):
  clean, cells = TABLE1[row]
  for robust, printed in cells:
    assert abs(100 * report.p_drop(clean / 100, robust / 100) - printed) <= 1.0, (row, robust, printed)
