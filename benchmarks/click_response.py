"""How a click-trained adapter answers the click protocol, slice by slice, and whether it reads negative clicks as
negative (the #15 diagnosis in README "Interactive training"):

    python benchmarks/click_response.py ADAPTER [--bundle bundles/conv_lora_demo_interactive.json] [--multimask]
        [--click_radius 5] [--probe 11,13,31,41]

1. Per validation sample of the bundle: its pixels, the Dice of the box and after each protocol click
   (``SimulatedAnnotator.protocol``, the metrics' own code path) and each click's label (1 positive, 0 negative),
   then the means and the mean Dice change after a negative and after a positive click.
2. For the ``--probe`` samples: click 1 (+ the multimask choice), then the protocol's click 2 decoded three ways:
   labelled negative, labelled positive (same place), negative without the mask prompt (with the mask prompt, the
   clicks are written into it as the protocol writes them, ``--click_radius``); pixels in the mask, on the
   target, and whether click 2's own pixel is in the mask. A decoder that honours the label keeps the negative
   click's pixel out of its mask.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from monai.bundle import ConfigParser

from medsam_peft.engines.interactive import SimulatedAnnotator, centre_click, decode_clicks, dice_per_round
from medsam_peft.tuners import load_tuned_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter")
    parser.add_argument("--bundle", default="bundles/conv_lora_demo_interactive.json")
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--multimask", action="store_true", help="the adapter was trained with --multimask true")
    parser.add_argument("--click_radius", type=float, default=5.0,
                        help="the click disks of the adapter's training (its run_config.json); 0 for none")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--probe", default="", help="comma-separated sample indices for part 2")
    args = parser.parse_args()

    config = ConfigParser()
    config.read_config(args.bundle)
    dataset = config.get_parsed_content("validate#dataset")
    model = load_tuned_sam(args.adapter, args.checkpoint).eval()
    sam = model.model
    annotator = SimulatedAnnotator(clicks=args.clicks, multimask=args.multimask, click_radius=args.click_radius)
    rows, after_negative, after_positive = [], [], []
    for index in range(len(dataset)):
        item = dataset[index]
        image, label = item["image"][None].float(), item["label"][None].float()
        box = torch.as_tensor(item["box"])[None].float()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(image, box, target=label, interaction=annotator).float()
        prediction = out > 0
        dice = dice_per_round(prediction, label > 0.5)[0].numpy()
        target = label[0, 0].numpy() > 0.5
        previous, labels = np.zeros_like(target), []
        for k in range(1, args.clicks + 1):
            click = centre_click(previous, target)
            labels.append(-1 if click is None else click[2])
            previous = prediction[0, k].numpy()
            if k > 1 and click is not None:
                (after_positive if click[2] == 1 else after_negative).append(dice[k] - dice[k - 1])
        rows.append(dice)
        print(f"sample {index:3d}  {int(target.sum()):4d} px  box {dice[0]:.3f}  clicks "
              + " ".join(f"{d:.3f}" for d in dice[1:]) + "  labels " + "".join(str(v) for v in labels))
    print("mean Dice  box " + " ".join(f"{d:.4f}" for d in np.mean(rows, 0)))
    print(f"mean Dice change after a negative click {np.mean(after_negative):+.4f} ({len(after_negative)} clicks), "
          f"after a positive one {np.mean(after_positive):+.4f} ({len(after_positive)})")

    for index in [int(i) for i in args.probe.split(",") if i]:
        item = dataset[index]
        image, target = item["image"][None].float(), item["label"][0].numpy() > 0.5
        with torch.no_grad():
            embedding = sam.encode_image(image)
            first = centre_click(np.zeros_like(target), target)
            points, labels = torch.tensor([[first[:2]]]), torch.tensor([[1.0]])
            low_res = sam.decode(embedding, None, points, labels)
            if args.multimask:
                low_res = sam.decode_lone_click(embedding, points, labels, low_res)
            mask = sam.upscale(low_res, target.shape)[0, 0].numpy() > 0
            second = centre_click(mask, target)
            answers = {}
            for name, second_label, previous in (("negative", 0, low_res), ("positive", 1, low_res),
                                                  ("negative, no mask prompt", 0, None)):
                clicks = [[(first[0], first[1], 1), (second[0], second[1], second_label)]]
                decoded = decode_clicks(sam, embedding, None, clicks, previous, click_radius=args.click_radius)
                answer = sam.upscale(decoded, target.shape)[0, 0].numpy() > 0
                answers[name] = (int(answer.sum()), int((answer & target).sum()),
                                 bool(answer[int(second[1]), int(second[0])]))
        print(f"probe {index}: target {int(target.sum())} px, click 1 mask {int(mask.sum())} px "
              f"({int((mask & target).sum())} on target), click 2 at ({second[0]:.0f}, {second[1]:.0f}) "
              f"label {second[2]}; click 2 decoded as (pixels, on target, click pixel in mask): {answers}")


if __name__ == "__main__":
    main()
