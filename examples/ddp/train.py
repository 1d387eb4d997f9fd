"""Train a small regression model with DistributedDataParallel, one process per node.

bake sets MASTER_ADDR (node-0), MASTER_PORT, WORLD_SIZE and RANK on every node, so
init_process_group("gloo") needs no arguments.  Each node trains on its own shard of
data; DDP averages the gradients, so the nodes' parameters must agree at the end.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)  # the same initial weights on every node (DDP also broadcasts them)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
ddp = nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)

shard = torch.Generator().manual_seed(1000 + rank)  # this node's own data
true_w = torch.linspace(-1, 1, 16)
for step in range(200):
    x = torch.randn(64, 16, generator=shard)
    y = (x @ true_w + 0.5).unsqueeze(1)
    loss = nn.functional.mse_loss(ddp(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step:3d}  loss {loss.item():.4f}", flush=True)

# Every node's parameters, gathered on every node: they must be identical.
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.empty_like(flat) for _ in range(world)]
dist.all_gather(gathered, flat)
agree = all(torch.equal(gathered[0], other) for other in gathered[1:])
print(f"node {rank} of {world}: final loss {loss.item():.4f}; "
      f"parameters agree across nodes: {agree}", flush=True)

if rank == 0 and os.path.isdir("/out"):
    torch.save(model.state_dict(), "/out/model.pt")
    print("wrote /out/model.pt")
dist.destroy_process_group()
sys.exit(0 if agree else 1)
