"""Helper for tests/test_training.py: train under `accelerate launch` and print the EMA weights' digest.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/mp_train.py CHECKPOINT_DIR [STOP_AFTER]
"""

import hashlib
import sys

from accelerate import PartialState

import crs
from crs.models import build_denoiser
from crs.training import TrainConfig, train

stop_after = int(sys.argv[2]) if len(sys.argv) > 2 else None
result = train(
    build_denoiser((2,)),
    crs.make_dataset("gmm"),
    TrainConfig(steps=6, batch_size=16, checkpoint_every=3),
    checkpoint_dir=sys.argv[1],
    stop_after=stop_after,
    progress=False,
)
state = PartialState()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in result.ema.parameters())).hexdigest()[:16]
line = (
    f"RESULT rank={state.process_index} world={state.num_processes} step={result.steps_done} "
    f"first_loss={result.losses[0]:.6f} ema={digest}"
)
print(line, flush=True)
# each process's own file too: the two processes share one stdout pipe, where their lines may interleave
with open(f"{sys.argv[1]}.result{state.process_index}", "w") as f:
    f.write(line + "\n")
