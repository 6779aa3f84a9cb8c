"""PixelVAE++: a PixelCNN++ decoder with three groups of latents and an RBM (or baseline) prior.

Latent vector z = [z1, z2, z3]:
- z1, concatenated: q(z1 | x) from a conv encoder; f(z1) = dense + transposed convs up to the image size, a map
  every decoder pixel sees un-shifted (the up path's `cond_map`).
- z2, conditioning: q(z2 | x) from a second conv encoder; z2 is the global `h` of the up path's gated ResNets.
- z3, shared: for each of the (nr_resnet + 1) * 3 down-path outputs of the decoder, a conv reduces it to
  [B, s, s, 1] (s = H / 4) and a dense layer gives `shared_latents_per_layer` logits; f(z3_k) = dense + transposed
  convs up to that output's size, concatenated to the skip the mirror up-path block pops. The decoder's down path
  is the z3 encoder: the encoder/decoder fusion.

The down path is a function of x alone, so q(z | x) is factorial given x and the down path runs once per image
whatever the number of latent samples. Given z, the decoder output at pixel (i, j) depends on x only at earlier
pixels; x reaches later pixels only through z.

Pixels are in model space: x in [-1, 1] ([B, H, W, C]); binary images use {-1, +1} (`to_model_space`).
`prior='none'` is plain PixelCNN++ (no latents), the paper's baseline.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from pvpp import relax, settings
from pvpp.model.likelihoods import LIKELIHOODS, make_likelihood
from pvpp.model.pixelcnn import NUM_STAGES, DownPath, PixelCNNPP
# concat_elu is looked up on the module when traced, so pvpp.bench.train's 'before' baseline swaps every use.
from pvpp.nn import resnet
from pvpp.nn.weightnorm import WNConv, WNConvTranspose, WNDense
from pvpp.priors import PRIORS, Prior, make_prior, prior_type
from pvpp.priors.rbm_prior import rbm_params
from pvpp.validation import check_int

__all__ = [
    "LIKELIHOODS", "PRIORS", "ModelConfig", "ModelOutput", "PixelVAEPP", "caltech101_config", "cifar10_config",
    "count_params", "mnist_config", "omniglot_config", "rbm_params", "to_model_space",
]


@settings.check_classified
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the architecture. Variants: `config.replace(...)`.

    image_shape: (H, W, C), H and W divisible by 4. likelihood: 'bernoulli' (binary) or 'logistic_mixture' (RGB).
    num_concat_latents / num_cond_latents / shared_latents_per_layer: sizes of z1, z2 and each z3 group
    (0 turns a group off). prior: 'rbm', 'gaussian', 'bernoulli' or 'none'. rbm_num_left: the first
    rbm_num_left latents of [z1, z2, z3] form the RBM's left side, the rest its right side.
    tau: temperature of the Gumbel-sigmoid relaxation. encoder_filters: width of the z1 / z2 encoders and f(z1).
    latent_map_channels: channels of each f(z3_k). rbm_init_scale: std of the initial RBM weights.
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    likelihood: str = "bernoulli"
    nr_resnet: int = settings.setting(3, "gated ResNet blocks per resolution of the PixelCNN++ decoder", minimum=1)
    nr_filters: int = settings.setting(64, "channels of the decoder", minimum=1)
    nr_logistic_mix: int = settings.setting(
        10, "components of the discretized logistic mixture (RGB data)", minimum=1
    )
    dropout_rate: float = settings.setting(0.5, "dropout in the gated ResNets")
    downsample: bool = settings.setting(True, "three resolutions in the decoder (False: one, as for Caltech-101)")
    num_concat_latents: int = settings.setting(400, "size of z1 (concatenated latents)", minimum=0)
    num_cond_latents: int = settings.setting(0, "size of z2 (conditioning latents)", minimum=0)
    shared_latents_per_layer: int = settings.setting(
        0, "size of each z3 group (one per down-path output)", minimum=0
    )
    prior: str = settings.setting(
        "rbm", "latent prior: " + ", ".join(PRIORS) + " ('none' = plain PixelCNN++)", choices=PRIORS
    )
    rbm_num_left: int = settings.setting(
        200, "latents on the RBM's left side (the first ones of [z1, z2, z3])", minimum=0
    )
    tau: float = settings.setting(relax.DEFAULT_TAU, "temperature of the Gumbel-sigmoid relaxation")
    encoder_filters: int = settings.setting(64, "channels of the z1 / z2 encoders and of f(z1)", minimum=1)
    latent_map_channels: int = settings.setting(16, "channels of each f(z3) map", minimum=1)
    rbm_init_scale: float = settings.setting(0.01, "standard deviation of the initial RBM weights")

    #: On resume (`pvpp.settings`): the architecture and its initialisation are the run; the relaxation's
    #: temperature and the dropout rate shape the training objective only.
    ON_RESUME: ClassVar[dict[str, str]] = {
        "*": settings.FIXED,
        "tau": settings.CHANGEABLE,
        "dropout_rate": settings.CHANGEABLE,
    }

    def __post_init__(self):
        image_shape = tuple(self.image_shape)
        for d in image_shape:
            check_int(d, "image_shape", 1)
        object.__setattr__(self, "image_shape", tuple(int(d) for d in image_shape))
        h, w, c = self.image_shape
        if h % 4 or w % 4 or h < 4 or w < 4:
            raise ValueError(f"image_shape H and W must be positive multiples of 4, got {self.image_shape}")
        make_likelihood(self)  # validates the likelihood's name against the channels
        for name in ("nr_resnet", "nr_filters", "nr_logistic_mix", "encoder_filters", "latent_map_channels"):
            check_int(getattr(self, name), name, 1)
        for name in ("num_concat_latents", "num_cond_latents", "shared_latents_per_layer"):
            check_int(getattr(self, name), name, 0)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        make_prior(self)  # validates the prior's name and its own settings (e.g. the RBM's split)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        return cls(**values)

    @property
    def num_skips(self) -> int:
        """Down-path outputs (and z3 groups): (nr_resnet + 1) * 3."""
        return (self.nr_resnet + 1) * NUM_STAGES

    @property
    def num_shared_latents(self) -> int:
        return self.group_sizes[2]

    @property
    def group_sizes(self) -> tuple[int, int, int]:
        """(|z1|, |z2|, |z3|); all zero for a prior without latents ('none')."""
        if not prior_type(self.prior).uses_latents:
            return (0, 0, 0)
        return (self.num_concat_latents, self.num_cond_latents, self.shared_latents_per_layer * self.num_skips)

    @property
    def num_latents(self) -> int:
        return sum(self.group_sizes)

    @property
    def out_channels(self) -> int:
        return make_likelihood(self).num_outputs

    @property
    def latent_map_size(self) -> tuple[int, int]:
        """(s_h, s_w): the smallest resolution, where the latent maps start (H / 4, W / 4)."""
        return (self.image_shape[0] // 4, self.image_shape[1] // 4)

    @property
    def num_posterior_params(self) -> int:
        """Width of `encode`'s output: K logits, or K means then K log-scales for the Gaussian prior."""
        return make_prior(self).posterior.params_per_latent * self.num_latents


# The paper's configurations (section 3, appendix B). Binary data sets: 400 z1 only, RBM 200 + 200.
mnist_config = functools.partial(
    ModelConfig, image_shape=(28, 28, 1), likelihood="bernoulli", nr_resnet=3, nr_filters=64,
    num_concat_latents=400, rbm_num_left=200,
)
omniglot_config = mnist_config
caltech101_config = functools.partial(mnist_config, downsample=False, nr_filters=32)
# CIFAR-10: 512 z1, 128 z2, 64 per shared layer; RBM with [z1, z2] on the left and z3 on the right.
cifar10_config = functools.partial(
    ModelConfig, image_shape=(32, 32, 3), likelihood="logistic_mixture", nr_resnet=5, nr_filters=128,
    nr_logistic_mix=10, num_concat_latents=512, num_cond_latents=128, shared_latents_per_layer=64,
    rbm_num_left=640, encoder_filters=64,
)


class ModelOutput(NamedTuple):
    """One pass of `PixelVAEPP.__call__`.

    posterior: [B, P] posterior parameters (`ModelConfig.num_posterior_params`).
    latents: [B, K] the reparameterised sample (relaxed zeta in (0, 1), or Gaussian z).
    decoder_out: [B, H, W, out_channels] Bernoulli logits or mixture parameters.
    prior: RBMParams ('rbm'), [K] logits ('bernoulli') or None.
    """

    posterior: jax.Array
    latents: jax.Array
    decoder_out: jax.Array
    prior: Any


class PixelVAEPP(nn.Module):
    """The fused encoder / decoder. Methods take x in model space [-1, 1], [B, H, W, C]."""

    config: ModelConfig

    @property
    def prior(self) -> Prior:
        """The prior object of the configuration (`pvpp.priors.make_prior`)."""
        return make_prior(self.config)

    @property
    def likelihood(self):
        """The pixel likelihood object of the configuration (`pvpp.model.likelihoods.make_likelihood`)."""
        return make_likelihood(self.config)

    def setup(self):
        cfg = self.config
        prior = self.prior
        self.decoder = PixelCNNPP(cfg.nr_resnet, cfg.nr_filters, cfg.out_channels, cfg.dropout_rate, cfg.downsample)
        per_latent = prior.posterior.params_per_latent
        z1, z2, z3 = cfg.group_sizes
        if z1:
            self.z1_encoder = ConvEncoder(cfg.encoder_filters, per_latent * z1)
            self.z1_map = LatentMap(cfg.latent_map_size, cfg.image_shape[:2], cfg.encoder_filters)
        if z2:
            self.z2_encoder = ConvEncoder(cfg.encoder_filters, per_latent * z2)
        if z3:
            self.z3_encoders = [
                SkipEncoder(cfg.latent_map_size, per_latent * cfg.shared_latents_per_layer) for _ in range(cfg.num_skips)
            ]
            self.z3_maps = [
                LatentMap(cfg.latent_map_size, size, cfg.latent_map_channels) for size in _skip_sizes(cfg)
            ]
        if prior.param_scope is not None:
            # The prior's parameters live under its own name ('rbm', 'bernoulli_prior') in the parameter tree.
            setattr(self, prior.param_scope, prior.param_module())

    def __call__(self, x: jax.Array, key: jax.Array, *, tau: float | jax.Array | None = None, train: bool = False) -> ModelOutput:
        """Encode, draw one reparameterised sample, decode; the down path runs once.

        key: for the latent noise (dropout takes the 'dropout' rng collection). tau defaults to config.tau.
        """
        tau = self.config.tau if tau is None else tau
        self._check_input(x)
        down = self.decoder.down(x, train=train)
        posterior = self._posterior(x, down)
        latents = self._reparameterised_sample(key, posterior, tau)
        out = self.decode_with_down_path(down, latents, train=train)
        return ModelOutput(posterior, latents, out, self.prior_params())

    def encode(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x [B, H, W, C] -> posterior parameters [B, P] in the order [z1, z2, z3] (Gaussian: means then log-scales)."""
        self._check_input(x)
        return self._posterior(x, self.decoder.down(x, train=train))

    def encode_with_down_path(self, x: jax.Array, *, train: bool = False) -> tuple[DownPath, jax.Array]:
        """(down path, posterior parameters): for many decodes of one image (IWAE, reconstructions)."""
        self._check_input(x)
        down = self.decoder.down(x, train=train)
        return down, self._posterior(x, down)

    def decode(self, x: jax.Array, z: jax.Array, *, train: bool = False) -> jax.Array:
        """Decoder outputs [B, H, W, out_channels] given latents z [B, K] (relaxed, binary or Gaussian)."""
        self._check_input(x)
        return self.decode_with_down_path(self.decoder.down(x, train=train), z, train=train)

    def decode_with_down_path(self, down: DownPath, z: jax.Array, *, train: bool = False) -> jax.Array:
        """The up path for latents z [B, K] on a precomputed down path (of the same images)."""
        cond_map, h, extras = self.decoder_conditioning(z)
        return self.decoder.up(down, cond_map=cond_map, h=h, skip_extras=extras, train=train)

    def decoder_conditioning(self, z: jax.Array) -> tuple[jax.Array | None, jax.Array | None, list | None]:
        """What the decoder's up path reads of latents z [B, K]: (cond_map f(z1) [B, H, W, D] or None,
        h = z2 [B, |z2|] or None, skip_extras: one f(z3_k) [B, H_k, W_k, D] per skip, or None)."""
        cfg = self.config
        if z.ndim != 2 or z.shape[1] != cfg.num_latents:
            raise ValueError(f"z must be [B, {cfg.num_latents}], got {z.shape}")
        z1, z2, z3 = jnp.split(z, [cfg.group_sizes[0], cfg.group_sizes[0] + cfg.group_sizes[1]], axis=-1)
        cond_map = self.z1_map(z1) if cfg.group_sizes[0] else None
        h = z2 if cfg.group_sizes[1] else None
        extras = None
        if cfg.group_sizes[2]:
            groups = jnp.split(z3, cfg.num_skips, axis=-1)
            extras = [latent_map(g) for latent_map, g in zip(self.z3_maps, groups)]
        return cond_map, h, extras

    def prior_params(self):
        """The prior's parameters (RBMParams for 'rbm', [K] logits for 'bernoulli'), or None."""
        scope = self.prior.param_scope
        return None if scope is None else getattr(self, scope)()

    def _posterior(self, x: jax.Array, down: DownPath) -> jax.Array:
        cfg = self.config
        parts = []
        if cfg.group_sizes[0]:
            parts.append(self.z1_encoder(x))
        if cfg.group_sizes[1]:
            parts.append(self.z2_encoder(x))
        if cfg.group_sizes[2]:
            features = [jnp.concatenate([u, ul], axis=-1) for u, ul in zip(down.u_list, down.ul_list)]
            parts.extend(enc(f) for enc, f in zip(self.z3_encoders, features))
        if not parts:
            return jnp.zeros((x.shape[0], 0), x.dtype)
        return self.prior.posterior.join(parts)  # Gaussian: [all means, all log-scales]

    def _reparameterised_sample(self, key: jax.Array, posterior: jax.Array, tau) -> jax.Array:
        return self.prior.posterior.relaxed_sample(key, posterior, tau)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(f"x must be [B, {', '.join(map(str, self.config.image_shape))}], got {x.shape}")


class ConvEncoder(nn.Module):
    """q(z_g | x) logits: x [B, H, W, C] -> [B, num_outputs]. Three 3x3 convs (the last two stride 2) and a dense layer."""

    filters: int
    num_outputs: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.elu(WNConv(self.filters, (3, 3), padding="SAME")(x))
        h = jax.nn.elu(WNConv(self.filters, (3, 3), (2, 2), "SAME")(h))
        h = jax.nn.elu(WNConv(2 * self.filters, (3, 3), (2, 2), "SAME")(h))
        return WNDense(self.num_outputs)(h.reshape(h.shape[0], -1))


class SkipEncoder(nn.Module):
    """q(z3_k | x) logits from one down-path output: [B, r_h, r_w, D] -> conv to [B, s_h, s_w, 1] -> dense -> [B, num_outputs]."""

    base_size: tuple[int, int]
    num_outputs: int

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        factor = features.shape[1] // self.base_size[0]
        if factor > 1:
            reduce = WNConv(1, (factor, factor), (factor, factor), "VALID")
        else:
            reduce = WNConv(1, (3, 3), padding="SAME")
        h = reduce(resnet.concat_elu(features))
        return WNDense(self.num_outputs)(jax.nn.elu(h).reshape(h.shape[0], -1))


class LatentMap(nn.Module):
    """f(z): [B, K] -> [B, H_out, W_out, channels]: dense to the base grid, then stride-2 transposed 3x3 convs.

    Non-causal on purpose: every output position sees all of z.
    """

    base_size: tuple[int, int]
    out_size: tuple[int, int]
    channels: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        (bh, bw), (oh, ow) = self.base_size, self.out_size
        steps = int(round(math.log2(oh // bh)))
        if bh * 2**steps != oh or bw * 2**steps != ow:
            raise ValueError(f"cannot grow a latent map from {self.base_size} to {self.out_size} by doubling")
        m = WNDense(bh * bw * self.channels)(z).reshape(z.shape[0], bh, bw, self.channels)
        for _ in range(steps):
            # Transposed 3x3 stride 2, cropped to exactly double the size.
            m = WNConvTranspose(self.channels, (3, 3), (2, 2), padding=((1, 2), (1, 2)))(jax.nn.elu(m))
        return m


def to_model_space(config: ModelConfig, images: jax.Array) -> jax.Array:
    """Data -> model space [-1, 1]: binary {0, 1} -> {-1, +1}; uint8 0..255 -> the 256-level grid."""
    return make_likelihood(config).to_model_space(images)


def count_params(tree) -> int:
    return int(sum(p.size for p in jax.tree.leaves(tree)))


def _skip_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """Spatial size of each down-path output, in down-path order."""
    h, w = cfg.image_shape[:2]
    sizes = []
    for stage in range(NUM_STAGES):
        factor = 2**stage if cfg.downsample else 1
        sizes.extend([(h // factor, w // factor)] * (cfg.nr_resnet + 1))
    return sizes
