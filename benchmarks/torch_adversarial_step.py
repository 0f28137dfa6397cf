"""Time the PyTorch reference Mathieu et al. (2016) training iteration on MNIST shapes, for the side-by-side speed
comparison.

This re-creates, in plain PyTorch, the networks and the per-iteration work of the public reference implementation
(ananyahjha93/disentangling-factors-of-variation-using-adversarial-training: networks.py, and training.py's loop,
A/B/C at its lines 126-246; docs/methods.md Sec. 4), so that `python adversarial_disentangle.py --dataset mnist
--benchmark` can be compared with it on the same machine. One iteration, as the reference runs it, with three Adams
(lr 1e-4, betas 0.5 / 0.999), batch 64, z = s = 16:

  A. auto-encoder, on a same-class pair (x1, x2): encoder on x1 and, in a second pass, on x2; KL(x1) / (B * P)
      backward (graph kept); Dec(z1, s1) and Dec(z1, s2) against x1, each mMSE backward on its own; Adam step on
      encoder + decoder;
  B. generator, twice, on two fresh batches x1, x3: encoder on each; KL(x1) backward; D(x3, Dec(z1, s3)) and
      D(x3, Dec(z_p, s3)), z_p ~ N(0, I), each a 2-way softmax CE against "real", backward on its own; Adam step on
      encoder + decoder (the D gradients these leave behind are cleared by C's zero_grad);
  C. discriminator, once, on a fresh x1 and a same-class pair (x2, x3): CE(D(x2, x3), real) backward; encoder on x1
      and on x3, fake = Dec(mu1, s3); CE(D(x3, fake), fake) backward; D's accuracy over the 2B decisions (argmax of
      the two logits, read with .item()); D's Adam steps only if that accuracy is below 0.8.

This file times the reference, so it keeps the reference's own behaviour where our Keras model deliberately differs
(docs/methods.md Sec. 4): the gate reads D's accuracy on the current batch, the one D is about to be trained on (ours:
the previous batch); the fake image is not detached in C, so its backward runs through D, the decoder and both
encoder passes, leaving encoder/decoder gradients that only the next A's zero_grad clears (ours: detached, so C
costs no encoder or decoder backward); every loss term gets its own backward call, as there, so A back-propagates
the encoder pass of x1 three times and B twice; the pairs D sees are (x2, x3) and (x3, fake). Also as there: N(0, 0.05)
initialisation of Conv2d and Linear weights (zero biases, ConvTranspose2d left at PyTorch's default), and
InstanceNorm2d with track_running_stats=True (train mode: batch statistics, plus a running-stat update per pass).
Left out: the data loader (the reference draws each image's partner with random.SystemRandom in __getitem__),
copying batches into its preallocated tensors, and its per-iteration log-file and TensorBoard writes. The reference
runs on a GPU by default (--cuda); this file times the CPU, like torch_reference_step.py.

Counting: the reference pulls 7 paired batches from its loader per iteration (A 1, each B 2, C 2; 14 x 64 images),
of which 9 x 64 distinct images enter its networks (A: x1, x2; each B: x1, x3; C: x1, x2, x3). images/s here counts
8 x 64 per iteration, the figure our --benchmark uses ((4 + 2 * generator_steps) * batch_size: its C reuses A's x2 as
the unrelated image), so that the two images/s figures compare as the two ms/iter do. The gate changes the work (D's
Adam step or not), so the file also prints in how many timed iterations D stepped.

Images are random (the arithmetic does not depend on their values; the gate does, through D's accuracy) and already
in memory, which favours this side: our figure includes the tf.data pipeline. PyTorch is not a dependency of this
project; install it into a separate environment to run this file:

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    /tmp/torch/bin/python benchmarks/torch_adversarial_step.py --threads 2
"""
import argparse
import time

import torch
from torch import nn


def conv_blocks(channels, widths, activation):
    layers = []
    for out in widths:  # 28 -> 13 -> 6 -> 2
        layers += [nn.Conv2d(channels, out, 5, 2, 1), nn.InstanceNorm2d(out, track_running_stats=True), activation()]
        channels = out
    return nn.Sequential(*layers, nn.Flatten())


class Encoder(nn.Module):
    def __init__(self, z_dim=16, s_dim=16):
        super().__init__()
        self.body = conv_blocks(1, (16, 32, 64), lambda: nn.ReLU(inplace=True))
        self.mu, self.logvar, self.s = nn.Linear(256, z_dim), nn.Linear(256, z_dim), nn.Linear(256, s_dim)

    def forward(self, x):
        h = self.body(x)
        return self.mu(h), self.logvar(h), self.s(h)


class Decoder(nn.Module):
    def __init__(self, z_dim=16, s_dim=16):
        super().__init__()
        self.z_in, self.s_in = nn.Linear(z_dim, 256), nn.Linear(s_dim, 256)
        self.body = nn.Sequential(  # 2 -> 6 -> 14 -> 28
            nn.ConvTranspose2d(128, 32, 4, 2, 0), nn.InstanceNorm2d(32, track_running_stats=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(32, 16, 4, 2, 0), nn.InstanceNorm2d(16, track_running_stats=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, z, s):
        z = nn.functional.leaky_relu_(self.z_in(z), 0.2)
        s = nn.functional.leaky_relu_(self.s_in(s), 0.2)
        return self.body(torch.cat([z, s], dim=1).view(-1, 128, 2, 2))


class Discriminator(nn.Module):
    """D(anchor, candidate): pair on 2 channels, 3 x [Conv k5 s2 p1, IN, LeakyReLU 0.2] 32-64-128, Linear(512, 2)."""

    def __init__(self):
        super().__init__()
        self.body = conv_blocks(2, (32, 64, 128), lambda: nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(512, 2)

    def forward(self, image_1, image_2):
        return self.out(self.body(torch.cat([image_1, image_2], dim=1)))


def reference_init(module):
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.05)
        nn.init.zeros_(module.bias)


def reparameterize(mu, logvar):
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    enc, dec, disc = Encoder(), Decoder(), Discriminator()
    for net in (enc, dec, disc):
        net.apply(reference_init)

    def adam(params):
        return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999))

    autoencoder_opt = adam(list(enc.parameters()) + list(dec.parameters()))
    generator_opt = adam(list(enc.parameters()) + list(dec.parameters()))
    discriminator_opt = adam(disc.parameters())
    b, pixels, generator_steps, limit = args.batch_size, 28 * 28, 2, 0.8
    batches = [torch.rand(b, 1, 28, 28) for _ in range(2 + 2 * generator_steps + 3)]  # the 9 batches that are used
    real = torch.ones(b, dtype=torch.long)
    fake = torch.zeros(b, dtype=torch.long)
    cross_entropy = nn.CrossEntropyLoss()

    def mse(x_hat, x):
        return torch.sum((x_hat - x).pow(2)) / x_hat.nelement()

    def kl(mu, logvar):
        return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / (b * pixels)

    def step():
        # A. auto-encoder: one backward per loss term, as the reference does.
        x1, x2 = batches[0], batches[1]
        autoencoder_opt.zero_grad()
        mu1, logvar1, s1 = enc(x1)
        z1 = reparameterize(mu1, logvar1)
        kl(mu1, logvar1).backward(retain_graph=True)
        _, _, s2 = enc(x2)
        reconstruction = mse(dec(z1, s1), x1)
        reconstruction.backward(retain_graph=True)
        swap = mse(dec(z1, s2), x1)
        swap.backward()
        autoencoder_opt.step()

        # B. generator, twice, on fresh batches.
        for k in range(generator_steps):
            x1, x3 = batches[2 + 2 * k], batches[3 + 2 * k]
            generator_opt.zero_grad()
            mu1, logvar1, _ = enc(x1)
            z1 = reparameterize(mu1, logvar1)
            kl(mu1, logvar1).backward(retain_graph=True)
            _, _, s3 = enc(x3)
            generator_1 = cross_entropy(disc(x3, dec(z1, s3)), real)
            generator_1.backward(retain_graph=True)
            generator_2 = cross_entropy(disc(x3, dec(torch.randn(b, 16), s3)), real)
            generator_2.backward()
            generator_opt.step()

        # C. discriminator: the fake is not detached and the gate reads this batch, as in the reference.
        x1, x2, x3 = batches[-3:]
        discriminator_opt.zero_grad()
        real_output = disc(x2, x3)
        real_error = cross_entropy(real_output, real)
        real_error.backward()
        mu1, _, _ = enc(x1)
        _, _, s3 = enc(x3)
        fake_output = disc(x3, dec(mu1, s3))
        fake_error = cross_entropy(fake_output, fake)
        fake_error.backward()
        targets = torch.cat((torch.ones(b), torch.zeros(b)), dim=0)
        predictions = torch.max(torch.cat((real_output, fake_output), dim=0), 1)[1]
        accuracy = (predictions == targets.long()).sum().item() / (2 * b)
        stepped = accuracy < limit
        if stepped:
            discriminator_opt.step()
        return stepped

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    d_steps = sum(step() for _ in range(args.steps))
    seconds = time.perf_counter() - start
    print(f"torch {torch.__version__}, {args.threads} threads, batch {b}: "
          f"benchmark: {1000 * seconds / args.steps:.2f} ms/iter, "
          f"{(4 + 2 * generator_steps) * b * args.steps / seconds:.0f} images/s")
    print(f"D stepped in {d_steps} of {args.steps} timed iterations (gate: accuracy on the current batch < {limit})")


if __name__ == "__main__":
    main()
