"""Time the PyTorch reference ML-VAE training iteration on MNIST shapes, for the side-by-side speed comparison.

This re-creates, in plain PyTorch, the networks and the per-iteration work of the public reference implementation
(ananyahjha93/multi-level-vae: networks.py's Encoder/Decoder, utils.py's accumulate_group_evidence, reparameterize,
group_wise_reparameterize and mse_loss, and training.py's loop at its lines 84-125; main.py's defaults; docs/methods.md
Sec. 5), so that `python mlvae.py --dataset mnist --grouping batch --benchmark` can be compared with it on the same
machine. Networks: encoder 784 -> 500 tanh -> four linear heads (style mu, logvar; class mu, logvar; 10 each),
decoder [z, s] (20) -> 500 tanh -> 784 sigmoid; N(0, 0.05) weights and zero biases (utils.weights_init); one Adam
over encoder + decoder, lr 1e-3, betas 0.9 / 0.999; batch 256. One iteration, as the reference runs it:

  encoder on the batch; the group evidence accumulated on detached copies of the class heads' outputs, in the
      reference's Python loops over the batch (exp_ in place; per image: .item() of its label, zero variances set
      to 1e-6 through a mask, 1 / var added into that label's entry of a dict; per label: invert; per image: mu / var
      added; per label: times the group variance; per image: its group's mu and var copied into a fresh (B, d)
      tensor, zero variances masked again), returned as new leaf tensors that require grad;
  style KL / (B * P) backward (graph kept); class KL of the per-image group posteriors / (B * P) backward (graph
      kept; it reaches only those new leaves); z reparameterised per image; class code: one eps ~ N(0, 0.1^2) per
      label present (a loop over torch.unique), then the reference's loop that writes std[i] * eps + mu[i] row by
      row into a fresh tensor; decoder; SSE / (B * P) backward (through the decoder, the row writes back to the
      leaves, and the style path into the encoder); Adam step.

This file times the reference, so it keeps the reference's own behaviour where our Keras model deliberately differs
(docs/methods.md Sec. 5): the evidence is computed on detached tensors with its per-class Python loops, so the
class heads never get a gradient (Adam skips them, their grads stay None) and the per-image loops, .item() calls
and row copies are part of the cost; the class KL is summed per image (each group's n_g times); the content eps has
std 0.1 and is drawn once per group; each loss term gets its own backward call. Left out: the data loader, copying
the batch into its preallocated tensor, and the per-iteration log-file and TensorBoard writes (the three losses are
still read back with .item(), as those writes read them). images/s counts B images per iteration, the figure our
`--grouping batch --benchmark` uses (our default --grouping sampler also takes 32 x 8 = 256 images per step). The
reference was written for PyTorch 0.4 (Variable wrappers, zero_grad zeroing grads instead of dropping them); this
uses the current API for the same work. The reference runs on a GPU by default (its --cuda flag is type=bool of a
string, so always true); this file times the CPU, like torch_reference_step.py.

Images are random and labels random digits 0-9 (the arithmetic does not depend on their values; the loops depend on
the labels only through the number of groups, 10 in practice at batch 256), already in memory, which favours this
side: our figure includes the tf.data pipeline. PyTorch is not a dependency of this project; install it into a
separate environment to run this file:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/torch_mlvae_step.py --threads 2
"""
import argparse
import time

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, style_dim=10, class_dim=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.Tanh())
        self.style_mu, self.style_logvar = nn.Linear(500, style_dim), nn.Linear(500, style_dim)
        self.class_mu, self.class_logvar = nn.Linear(500, class_dim), nn.Linear(500, class_dim)

    def forward(self, x):
        h = self.body(x)
        return self.style_mu(h), self.style_logvar(h), self.class_mu(h), self.class_logvar(h)


class Decoder(nn.Module):
    def __init__(self, style_dim=10, class_dim=10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(style_dim + class_dim, 500), nn.Tanh(), nn.Linear(500, 784), nn.Sigmoid())

    def forward(self, style, content):
        return self.body(torch.cat((style, content), dim=1)).view(-1, 1, 28, 28)


def reference_init(module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.05)
        nn.init.zeros_(module.bias)


def accumulate_group_evidence(class_mu, class_logvar, labels):
    """The reference's evidence: per-image and per-label Python loops on tensors that carry no gradient."""
    variances, means = {}, {}
    class_var = class_logvar.exp_()  # in place, on the detached copy, as there
    for i in range(len(labels)):
        label = labels[i].item()
        class_var[i][class_var[i] == 0.0] = 1e-6
        if label in variances:  # first the summed precisions, 1 / var
            variances[label] += 1 / class_var[i]
        else:
            variances[label] = 1 / class_var[i]
    for label in variances:
        variances[label] = 1 / variances[label]
    for i in range(len(labels)):
        label = labels[i].item()
        if label in means:
            means[label] += class_mu[i] * (1 / class_var[i])
        else:
            means[label] = class_mu[i] * (1 / class_var[i])
    for label in means:
        means[label] *= variances[label]
    group_mu = torch.empty(class_mu.size(0), class_mu.size(1))
    group_var = torch.empty(class_var.size(0), class_var.size(1))
    for i in range(len(labels)):
        label = labels[i].item()
        group_mu[i] = means[label]
        group_var[i] = variances[label]
        group_var[i][group_var[i] == 0.0] = 1e-6
    # New leaves (the reference's Variable(..., requires_grad=True)): nothing flows back to the class heads.
    return group_mu.requires_grad_(), torch.log(group_var).requires_grad_()


def reparameterize(mu, logvar):
    std = logvar.mul(0.5).exp_()
    return torch.randn_like(std).mul(std).add_(mu)


def group_wise_reparameterize(mu, logvar, labels):
    """One eps ~ N(0, 0.1^2) per label present, written row by row into a fresh tensor, as the reference does."""
    eps = {label.item(): torch.empty(1, logvar.size(1)).normal_(0.0, 0.1) for label in torch.unique(labels)}
    std = logvar.mul(0.5).exp_()
    sampled = torch.empty(std.size())
    for i in range(logvar.size(0)):
        sampled[i] = std[i].mul(eps[labels[i].item()])
        sampled[i].add_(mu[i])
    return sampled


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    enc, dec = Encoder(), Decoder()
    for net in (enc, dec):
        net.apply(reference_init)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3, betas=(0.9, 0.999))
    b, pixels = args.batch_size, 28 * 28
    x = torch.rand(b, 1, 28, 28)
    labels = torch.randint(0, 10, (b,))  # a CPU LongTensor, as the reference's loader gives

    def kl(mu, logvar):
        return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / (b * pixels)

    def step():
        opt.zero_grad()
        style_mu, style_logvar, class_mu, class_logvar = enc(x)
        grouped_mu, grouped_logvar = accumulate_group_evidence(class_mu.detach(), class_logvar.detach(), labels)
        style_kl = kl(style_mu, style_logvar)
        style_kl.backward(retain_graph=True)
        class_kl = kl(grouped_mu, grouped_logvar)
        class_kl.backward(retain_graph=True)
        style = reparameterize(style_mu, style_logvar)
        content = group_wise_reparameterize(grouped_mu, grouped_logvar, labels)
        reconstruction = torch.sum((dec(style, content) - x).pow(2)) / (b * pixels)
        reconstruction.backward()
        opt.step()
        return reconstruction.item() + style_kl.item() + class_kl.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    groups = len(torch.unique(labels))
    print(f"torch {torch.__version__}, {args.threads} threads, batch {b}: "
          f"benchmark: {1000 * seconds / args.steps:.2f} ms/iter, {b * args.steps / seconds:.0f} images/s")
    print(f"{groups} groups in the batch (labels drawn uniformly from 0-9)")


if __name__ == "__main__":
    main()
