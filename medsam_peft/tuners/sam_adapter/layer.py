from __future__ import annotations

import torch
import torch.nn as nn
from segment_anything.modeling.image_encoder import ImageEncoderViT

from medsam_peft.tuners.base import BaseTunerLayer


def high_pass(image: torch.Tensor, rate: float) -> torch.Tensor:
    """|IFFT| of the spectrum with its centred low-frequency square (``rate`` of the area) zeroed, per channel.

    The SAM-Adapter reference's ``fft``: half-width ``int(sqrt(H W rate) // 2)`` around the shifted centre.
    """
    height, width = image.shape[-2:]
    half = int((height * width * rate) ** 0.5 // 2)
    spectrum = torch.fft.fftshift(torch.fft.fft2(image.float(), norm="forward"), dim=(-2, -1))
    keep = torch.ones(height, width, device=image.device)
    keep[height // 2 - half : height // 2 + half, width // 2 - half : width // 2 + half] = 0
    spectrum = torch.fft.ifftshift(spectrum * keep, dim=(-2, -1))
    return torch.fft.ifft2(spectrum, norm="forward").real.abs()


class PromptGenerator(nn.Module):
    """The trainable part: embedding/handcrafted projections, per-block tuners and the shared up-projection."""

    def __init__(self, encoder: ImageEncoderViT, scale_factor: int, freq_nums: float, init_weights: bool) -> None:
        super().__init__()
        patch = encoder.patch_embed.proj
        dim, width = patch.out_channels, patch.out_channels // int(scale_factor)
        factory = {"device": patch.weight.device, "dtype": patch.weight.dtype}
        self.freq_nums = float(freq_nums)
        self.sam_adapter_embedding = nn.Linear(dim, width, **factory)
        self.sam_adapter_handcrafted = nn.Conv2d(patch.in_channels, width, patch.kernel_size, patch.stride, **factory)
        self.sam_adapter_tune = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width, **factory), nn.GELU()) for _ in encoder.blocks
        )
        self.sam_adapter_shared = nn.Linear(width, dim, **factory)
        if init_weights:
            nn.init.zeros_(self.sam_adapter_shared.weight)
            nn.init.zeros_(self.sam_adapter_shared.bias)
        self._features: torch.Tensor | None = None

    def prepare(self, image: torch.Tensor, patch_embeddings: torch.Tensor) -> None:
        """Compute the per-image features (B, H, W, d) that every block's prompt is derived from."""
        handcrafted = self.sam_adapter_handcrafted(high_pass(image, self.freq_nums).to(image.dtype))
        self._features = handcrafted.permute(0, 2, 3, 1) + self.sam_adapter_embedding(patch_embeddings)

    def prompt(self, index: int) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError("SAM-Adapter prompts were requested before the patch embedding ran")
        return self.sam_adapter_shared(self.sam_adapter_tune[index](self._features))


class PromptSource(nn.Module, BaseTunerLayer):
    """The frozen patch embedding; also hands the input image and its embeddings to the prompt generator."""

    merge_unsupported_reason = "prompts are a non-linear function of the input image"

    def __init__(self, base_layer: nn.Module, generator: PromptGenerator) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._generator = (generator,)  # registered once, on the image encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        embeddings = self.base_layer(image)
        self._generator[0].prepare(image, embeddings)
        return embeddings


class PromptedBlock(nn.Module, BaseTunerLayer):
    """A frozen encoder block whose input gets block ``index``'s generated prompt added."""

    merge_unsupported_reason = "prompts are a non-linear function of the input image"

    def __init__(self, base_layer: nn.Module, generator: PromptGenerator, index: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._generator = (generator,)
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x + self._generator[0].prompt(self.index).to(x.dtype))
