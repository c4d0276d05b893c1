"""Analysis: representation geometry (Fig. 2), t-SNE, and the cross-run comparison report (Tables 1/4, Fig. 3)."""
