"""Time the PyTorch reference cycle-VAE training step on MNIST shapes, for the side-by-side speed comparison.

This re-creates, in plain PyTorch, the network and the per-iteration work of the public reference
implementation (ananyahjha93/cycle-consistent-vae; docs/methods.md Sec. 1 and 3), so
that `python cycle_vae.py --dataset mnist --benchmark` can be compared with it on the same machine:

  forward cycle: encoder on two same-class batches of 64, swap-decode, SSE + KL, Adam step on encoder + decoder;
  reverse cycle: encoder on two more batches (s detached), decode one prior z with each s, encode both again,
      L1 between the means, backward (through the decoder too, as the reference does), encoder-only Adam step.

Images are random (the arithmetic does not depend on their values) and already in memory, which favours this
side: our figure includes the tf.data pipeline. PyTorch is not a dependency of this project; install it into a
separate environment to run this file:

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    /tmp/torch/bin/python benchmarks/torch_reference_step.py --threads 2
"""
import argparse
import time

import torch
from torch import nn


def encoder(z_dim=16, s_dim=16):
    layers, channels = [], 1
    for out in (16, 32, 64):  # 28 -> 13 -> 6 -> 2
        layers += [nn.Conv2d(channels, out, 5, 2, 1), nn.InstanceNorm2d(out), nn.ReLU()]
        channels = out
    body = nn.Sequential(*layers, nn.Flatten())
    return body, nn.Linear(256, z_dim), nn.Linear(256, z_dim), nn.Linear(256, s_dim)


class Encoder(nn.Module):
    def __init__(self, z_dim=16, s_dim=16):
        super().__init__()
        self.body, self.mu, self.logvar, self.s = encoder(z_dim, s_dim)

    def forward(self, x):
        h = self.body(x)
        return self.mu(h), self.logvar(h), self.s(h)


class Decoder(nn.Module):
    def __init__(self, z_dim=16, s_dim=16):
        super().__init__()
        self.z_in = nn.Sequential(nn.Linear(z_dim, 256), nn.LeakyReLU(0.2))
        self.s_in = nn.Sequential(nn.Linear(s_dim, 256), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(  # 2 -> 6 -> 14 -> 28
            nn.ConvTranspose2d(128, 32, 4, 2, 0), nn.InstanceNorm2d(32), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(32, 16, 4, 2, 0), nn.InstanceNorm2d(16), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, z, s):
        h = torch.cat([self.z_in(z), self.s_in(s)], dim=1).view(-1, 128, 2, 2)
        return self.body(h)


def kl(mu, logvar):
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - logvar - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    enc, dec = Encoder(), Decoder()
    forward_opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-4, betas=(0.9, 0.999))
    reverse_opt = torch.optim.Adam(enc.parameters(), lr=1e-4, betas=(0.9, 0.999))
    b, pixels = args.batch_size, 28 * 28
    batches = [torch.rand(b, 1, 28, 28) for _ in range(4)]

    def step():
        x1, x2, x3, x4 = batches
        forward_opt.zero_grad()
        mu1, logvar1, s1 = enc(x1)
        mu2, logvar2, s2 = enc(x2)
        z1 = mu1 + torch.randn_like(mu1) * (0.5 * logvar1).exp()
        z2 = mu2 + torch.randn_like(mu2) * (0.5 * logvar2).exp()
        loss = 2 * (nn.functional.mse_loss(dec(z1, s2), x1) + nn.functional.mse_loss(dec(z2, s1), x2)) + \
            3 * (kl(mu1, logvar1) + kl(mu2, logvar2)) / (b * pixels)
        loss.backward()
        forward_opt.step()

        reverse_opt.zero_grad()
        _, _, s3 = enc(x3)
        _, _, s4 = enc(x4)
        z = torch.randn(b, 16)
        mu3, _, _ = enc(dec(z, s3.detach()))
        mu4, _, _ = enc(dec(z, s4.detach()))
        reverse = 10 * torch.mean(torch.abs(mu3 - mu4))
        reverse.backward()
        reverse_opt.step()
        return loss.item() + reverse.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(f"torch {torch.__version__}, {args.threads} threads, batch {b}: "
          f"benchmark: {1000 * seconds / args.steps:.2f} ms/iter, {4 * b * args.steps / seconds:.0f} images/s")


if __name__ == "__main__":
    main()
