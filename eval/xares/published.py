"""Published X-ARES scores, by X-ARES task name.

Source: the X-ARES README (github.com/jimbozhang/xares, commit 161f0ef of
2025-09-02), "MLP Result" and "kNN Result" tables, column ``dasheng`` (the
benchmark's baseline encoder). LibriSpeech-100h's MLP score is the one the
README gives for v0.1.3, the X-ARES version this project runs. X-ARES
publishes no scores for CED, so the report's CED column stays empty.
"""

from __future__ import annotations

SOURCE = "X-ARES README (github.com/jimbozhang/xares @ 161f0ef, 2025-09-02), dasheng baseline"
BASELINE = "dasheng"

MLP = {
    "asvspoof2015": 0.964, "clotho": 0.029, "cremad": 0.767, "desed": 0.537, "esc50": 0.857,
    "fluentspeechcommands": 0.946, "freemusicarchive": 0.643, "fsd50k": 0.409,
    "fsdkaggle2018": 0.534, "gtzan_genre": 0.851, "libricount": 0.681, "librispeech": 0.724,
    "librispeechmalefemale": 0.986, "maestro": 0.524, "nsynthinstument": 0.688, "ravdess": 0.749,
    "speechcommandsv1": 0.969, "urbansound8k": 0.833, "vocalimitations": 0.253,
    "vocalsound": 0.910, "voxceleb1": 0.780, "voxlingua33": 0.814, "key_scratching": 0.999,
    "finger_snap": 0.870, "inside_outside_car": 0.972, "liveenv": 0.986,
    "subway_broadcast": 0.972,
}  # fmt: skip

KNN = {
    "asvspoof2015": 0.869, "cremad": 0.380, "esc50": 0.618, "fluentspeechcommands": 0.260,
    "freemusicarchive": 0.592, "gtzan_genre": 0.758, "libricount": 0.311,
    "librispeechmalefemale": 0.791, "nsynthinstument": 0.499, "ravdess": 0.408,
    "speechcommandsv1": 0.903, "urbansound8k": 0.662, "vocalimitations": 0.107,
    "vocalsound": 0.382, "voxceleb1": 0.262, "voxlingua33": 0.376, "key_scratching": 0.955,
    "finger_snap": 0.848, "inside_outside_car": 0.798, "subway_broadcast": 0.949,
}  # fmt: skip
