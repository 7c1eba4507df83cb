"""PyTorch peers that `adjax bench --peer=NAME` times beside adjax, interleaved, under one protocol.

The only peer is anomalib's EfficientAD (`anomalib.models.image.efficient_ad.torch_model.
EfficientAdModel`): its training step (the model's training forward, the sum of its three
losses, backward, and Adam with anomalib's settings) and its inference forward, on CUDA when
PyTorch sees a GPU, else on the CPU. Needs `pip install torch anomalib` (`adjax[peers]`); this
module imports them only when a peer is asked for, and adjax's core never imports this module.

Equal work (`bench.WORK_KEYS`): anomalib's training forward always runs the student on its
ImageNet-penalty batch (`compute_losses` calls `self.student(batch_imagenet)`, which fails on
None), so when adjax's config has no penalty folder, adjax's timed step is given a penalty pool
of random images instead (`adjax_pools`); the penalty batch of both sides is random uint8
images of the config's size, `config.train.batch_size` of them per step. anomalib's decoder
dropout (hard-coded 0.2) is set to adjax's `config.model.ae_dropout` on its six Dropout modules.
"""

import dataclasses
import platform
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from adjax import bench, results

INSTALL = "pip install torch anomalib"


def get(name: str) -> "AnomalibPeer":
    """The peer called `name`; ImportError naming what to install when its packages are
    missing, before any timing starts."""
    if name != "anomalib":
        raise ValueError(f"unknown peer {name!r}; the only peer is anomalib.")
    try:
        import anomalib  # noqa: F401
        import torch  # noqa: F401
        from anomalib.models.image.efficient_ad import torch_model  # noqa: F401
    except ImportError as err:
        raise ImportError(f"timing the anomalib peer needs PyTorch and anomalib, which are not "
                          f"installed ({err}): {INSTALL}") from err
    return AnomalibPeer()


@dataclasses.dataclass(frozen=True)
class AnomalibPeer:
    """anomalib's PyTorch EfficientAD as a `bench.Peer`."""

    name: str = "anomalib"
    # Checked against anomalib 2.7.0's efficient_ad/torch_model.py and lightning_model.py and
    # lightning 2.6's LRSchedulerConfig; none of them changes the timed work.
    differences: tuple[str, ...] = (
        "map-normalisation quantiles: anomalib takes them on the maps padded by 4 and "
        "upsampled to the input size (256x256 at 256 px; map_norm_quantiles -> get_maps -> "
        "compute_maps with normalize=False), adjax (like nelson1425/EfficientAD) on the "
        "unpadded 56x56 maps",
        "padding: anomalib pads the raw maps with zeros and then normalises, so its border "
        "holds 0.1 * (0 - q_a) / (q_b - q_a) (negative), while adjax normalises and then pads "
        "with 0 (the reference code's order)",
        "decoder dropout: anomalib hard-codes Dropout(p=0.2) after the six 4x4 decoder "
        "convolutions; adjax's config.model.ae_dropout defaults to 0.0 (the reference code); "
        "bench sets anomalib's rate to adjax's for the timing",
        "learning-rate drop: anomalib's StepLR(step_size=int(0.95 * steps)) is returned "
        "without an 'interval', so Lightning steps it once per epoch and the drop is counted "
        "in epochs; adjax drops at 95% of the steps (as the reference code)",
        "penalty images: anomalib's training step always runs the penalty batch (Imagenette "
        "in anomalib); when adjax's config has none, bench adds a random penalty pool to "
        "adjax so that both sides do the same work",
        "student calls: anomalib runs the student three times per step (image, penalty, "
        "jittered image), adjax once on the three concatenated; the FLOPs are the same",
    )

    def adjax_pools(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """("penalty",) when adjax's config has no penalty folder (see the module docstring)."""
        m = config.model
        if config.method != "efficientad" or m.size not in ("s", "m") or m.width != 1.0:
            raise ValueError("the anomalib peer times EfficientAD S or M at the reference width "
                             "(config.model.width = 1.0) only.")
        # anomalib's encoder ends in a fixed 8x8 convolution; adjax's scales it with the input
        # (size / 32), so the two nets are the same at 256 px only.
        if config.data.image_size != 256:
            raise ValueError(f"the anomalib peer times 256 px images only (anomalib's encoder "
                             f"has a fixed 8x8 last convolution), got "
                             f"config.data.image_size = {config.data.image_size}.")
        return () if config.loss.penalty_dir else ("penalty",)

    def build(self, config: ml_collections.ConfigDict, *, precision: str,
              batch_sizes: Sequence[int], train_steps: int,
              log: Callable[[str], None] = print) -> "_Anomalib":
        """anomalib's model for `config` at `precision`, ready to time."""
        log("adjax bench: building anomalib's EfficientAD")
        return _Anomalib(config, precision, batch_sizes, train_steps)


def versions() -> dict[str, str]:
    """The peer's package versions (torch, torchvision where installed, anomalib)."""
    import anomalib
    import torch

    found = {"torch": torch.__version__, "anomalib": anomalib.__version__}
    try:
        import torchvision

        found["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return found


class _Anomalib:
    """anomalib's EfficientAdModel under the clock (a `bench.Timed`)."""

    def __init__(self, config, precision, batch_sizes, train_steps):
        import anomalib
        import torch
        from anomalib.models.image.efficient_ad import torch_model

        self.torch, self.config, self.precision = torch, config, precision
        self.source = f"anomalib {anomalib.__version__}"
        self.train_steps = train_steps
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        # The same float32 rule as adjax: no TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        sizes = torch_model.EfficientAdModelSize
        model = torch_model.EfficientAdModel(
            teacher_out_channels=config.model.out_channels,
            model_size=sizes.M if config.model.size == "m" else sizes.S).to(self.device)
        dropouts = [m for m in model.ae.decoder.modules() if isinstance(m, torch.nn.Dropout)]
        for module in dropouts:
            module.p = float(config.model.ae_dropout)
        self.ae_dropout = float(config.model.ae_dropout)
        with torch.no_grad():  # set statistics, so that the normalisation steps run as in use
            model.mean_std["mean"].zero_()
            model.mean_std["std"].fill_(1.0)
            for name, q in model.quantiles.items():
                q.fill_(1.0 if name.startswith("qb") else 0.0)
        self.model = model
        # anomalib's configure_optimizers: Adam over student and autoencoder, lr 1e-4, L2 1e-5.
        self.optimizer = torch.optim.Adam([*model.student.parameters(),
                                           *model.ae.parameters()], lr=1e-4, weight_decay=1e-5)
        rng = np.random.default_rng(config.seed)
        size, batch = config.data.image_size, config.train.batch_size

        def images(n):
            return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), np.uint8))

        self.train_image = images(batch).to(self.device)
        self.penalty = images(batch).to(self.device)
        self.images = {b: images(b).to(self.device) for b in batch_sizes}
        self.host_image = images(1).numpy()

    # -- the Timed interface ---------------------------------------------------------------------

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16,
                                   enabled=self.precision == "bf16")

    @staticmethod
    def _to_input(images):  # uint8 NHWC -> float NCHW in [0, 1], as adjax's predict
        return images.permute(0, 3, 1, 2).float().div(255.0)

    def _predict(self, images):
        self.model.eval()
        with self.torch.inference_mode(), self._autocast():
            out = self.model(self._to_input(images))
        return out.anomaly_map, out.pred_score

    def train(self) -> None:
        self.model.train()
        for _ in range(self.train_steps):
            with self._autocast():
                losses = self.model(batch=self._to_input(self.train_image),
                                    batch_imagenet=self._to_input(self.penalty))
            self.optimizer.zero_grad()
            sum(losses).backward()
            self.optimizer.step()
        self._sync()

    def dispatch(self, batch: int) -> Any:
        return self._predict(self.images[batch])

    def wait(self, outputs: list[Any]) -> None:
        del outputs  # eager PyTorch: the work was queued in order; one synchronisation waits
        self._sync()

    def infer(self, batch: int) -> None:
        self.wait([self.dispatch(batch)])

    def round_trip(self) -> None:
        amap, score = self._predict(self.torch.from_numpy(self.host_image).to(self.device))
        amap.float().cpu().numpy(), score.float().cpu().numpy()

    def work(self) -> dict[str, Any]:
        return {"precision": self.precision, "tf32": False, "matmul_precision": "float32",
                "batch": self.config.train.batch_size, "image_size": self.config.data.image_size,
                "pools": {"train": "random uint8", "penalty": "random uint8"},
                "penalty": True, "ae_dropout": self.ae_dropout, "teacher": "random",
                "train_step": "EfficientAdModel.forward in training mode (teacher without "
                              "gradient on the image and its jittered copy; student on the "
                              "image, the penalty image and the jittered copy; autoencoder on "
                              "the jittered copy; the three losses), their sum's backward, "
                              "Adam with L2 weight decay"}

    def environment(self) -> dict[str, Any]:
        torch = self.torch
        return {"platform": "gpu" if self.cuda else "cpu",
                "device_kind": (torch.cuda.get_device_name(0) if self.cuda
                                else bench.cpu_model()),
                "device_count": torch.cuda.device_count() if self.cuda else 1,
                "process_count": 1, "torch_threads": torch.get_num_threads(), **versions(),
                "python": platform.python_version(), "adjax": results.git_commit()}

    def fields(self) -> dict[str, Any]:
        nets = {"teacher": self.model.teacher, "student": self.model.student,
                "autoencoder": self.model.ae}
        params = {k: sum(p.numel() for p in net.parameters()) for k, net in nets.items()}
        return {
            "train_devices": 1, "lower_s": None, "compile_s": None,
            "peak_bytes": self.torch.cuda.max_memory_allocated() if self.cuda else None,
            "params": sum(params.values()), "params_by_net": params,
            "precision": self.precision, "tf32": False, "matmul_precision": "float32",
            "inference_devices": 1, "compilation_cache": False,
        }
