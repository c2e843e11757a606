"""Evaluation: HEAR 2021 tasks through hear-eval-kit, probes, reports, leaderboard rows."""
