"""The paper's consistency ablation (Table 3) and K sweep (Figure 3) as paired experiments.

Table 3 crosses teacher augmentation (targets computed on the augmented view
or on the plain clip) with student augmentation (the student sees the
augmented view or the plain clip). Only the wave shift and SpecAugment are
toggled; mixup is off in every row. Every row runs twice: with a learned
teacher ensemble and with an oracle teacher whose targets are the classes
the view leaves audible (``hear_ced.distill.oracle``), which separates consistency
from teacher quality.

The corpus is built so that augmentation changes content (short events,
narrow-band classes, masks able to hide them), the students are trained
long enough to over-fit without augmentation, checkpoints are selected on a
validation split and reported on a separate test split, and every seed
pairs all rows (same initial weights and data order). Rows are compared
through their per-seed differences (``hear_ced.distill.stats``).

Modules: ``protocol`` (the fixed settings and the rows), ``data`` (corpus,
views, spectrograms, oracle labels), ``run`` (teachers, students, the worker
pool, resume), ``report`` (statistics, Markdown, plot).
"""
