"""One rank of a torchrun job for tests/diffuma/training/test_distributed.py (run by torchrun, not pytest).

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py CONFIG_JSON DATA OUT MODE [STOP]

MODE "fresh" trains from CONFIG_JSON (returning abruptly after STOP steps if given, as a kill would);
"resume" continues OUT. Each rank then saves its final weights to OUT/final_rank<r>.pt."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from diffuma.models import registry  # noqa: E402

registry.MODELS["standin"] = "standin_model:StandIn"

from diffuma.training.trainer import build_trainer, shutdown_distributed  # noqa: E402

cfg, data, out, mode = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
stop = int(sys.argv[5]) if len(sys.argv) > 5 else None
if mode == "fresh":
    trainer = build_trainer(cfg, data, out, progress=False)
    local_losses = []
    inner = trainer.loss_module

    def recording(*args, **kw):  # each rank's own loss of each step, for the test of the logged (mean) one
        loss, logs = inner(*args, **kw)
        local_losses.append(float(loss.detach()))
        return loss, logs

    trainer.loss_module = recording
    trainer.fit(stop_after_steps=stop)
    (out / f"local_losses_rank{trainer.dist.rank}.json").write_text(json.dumps(local_losses))
else:
    trainer = build_trainer(None, data, out, resume=True, progress=False)
    trainer.fit(resume=True)
state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
torch.save({"step": trainer.step, "world_size": trainer.dist.world_size, "model": state},
           out / f"final_rank{trainer.dist.rank}.pt")
shutdown_distributed()
