"""What --distribute mirrored costs on a CPU: the cycle-VAE's MNIST training step (batch 64) on one device without
a strategy, and under MirroredStrategy over 1 and 2 logical CPU devices, each in its own process.

    python benchmarks/distribute_speed.py --data-dir DIR [--rounds 2]

Logical CPU devices share the same cores, so this measures the strategy's overhead (splitting the batch,
running the replicas, all-reducing the gradients), not a speed-up: that needs several GPUs.
"""
import argparse
import json
import pathlib
import subprocess
import sys

SETTINGS = (("no strategy", 0), ("mirrored, 1 logical CPU", 1), ("mirrored, 2 logical CPUs", 2))


def measure(data_dir, devices):
    import tensorflow as tf

    if devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import common
    import cycle_vae
    import data
    import keras

    common.configure_cpu(one_thread_per_op=True)  # as cycle_vae.py does
    dataset = data.load_dataset("mnist", data_dir)
    config = cycle_vae.Config(batch_size=64)
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)]) if devices
                else tf.distribute.get_strategy())
    with strategy.scope():
        model = cycle_vae.CycleVAE(dataset.image_shape, dataset="mnist", z_dim=16, s_dim=16, reverse_mode="separate")
        model.compile(optimizer=keras.optimizers.Adam(1e-4), reverse_optimizer=keras.optimizers.Adam(1e-4))
        model.build()
    result = common.benchmark_training(model, cycle_vae.training_data(dataset, config), images_per_step=64 * 4)
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--devices", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, internal
    args = parser.parse_args()
    if args.devices is not None:
        return measure(args.data_dir, args.devices)
    rows = {name: [] for name, _ in SETTINGS}
    for _ in range(args.rounds):  # alternate the settings, so that a change of the machine's load hits all alike
        for name, devices in SETTINGS:
            command = [sys.executable, __file__, "--devices", str(devices)] + (
                ["--data-dir", args.data_dir] if args.data_dir else [])
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows[name].append(json.loads(output.strip().splitlines()[-1])["ms_per_iter"])
    print("| setting | " + " | ".join(f"round {r + 1} (ms/step)" for r in range(args.rounds)) + " |")
    print("|---" * (args.rounds + 1) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{value:.1f}" for value in values) + " |")


if __name__ == "__main__":
    main()
