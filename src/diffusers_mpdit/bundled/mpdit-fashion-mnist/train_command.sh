#!/usr/bin/env bash
# Trained in six stages, EMA weights: on a 2-core CPU with 64-image steps, EMA 0.999, 2,500 steps at AdamW 1e-3 with logit-normal flow times (69 minutes); 2,300 steps with uniform flow times, 1,500 at 5e-4 and 800 decaying linearly from 1.7e-4 to 0 (about 90 minutes); 3,200 steps with uniform flow times, warming up to 3e-4 over 100 and decaying linearly to 0 (83 minutes); then on one H200 GPU with 256-image steps, EMA 0.9995, 3,000 steps warming up to 3e-4 over 200 and decaying linearly to 0 (1 minute 55 seconds); then on the CPU again without random flips (the data's shoes point left), 2,400 steps of 64 images, EMA 0.999, warming up to 2e-4 over 100 and decaying linearly to 0 (66 minutes); then on one H200 GPU again, without flips, 2,412 steps of 256 images, EMA 0.9995, warming up to 2e-4 over 200, on a linear schedule laid out over 3,000 steps that it stops at 2,412 (2 minutes 1 second). Its saved sampling default: guidance 2.5, only for flow times t <= 0.6.
# Data (Debian, as root): apt-get install dataset-fashion-mnist && python examples/prepare_fashion_mnist.py --output_dir data/fashion-mnist
# Each stage writes its pipeline (EMA weights) to its output folder and the next continues from it; the last,
# out/mpdit-fashion-mnist-6, is the bundled folder (without the checkpoints and logs).
python examples/train_mpdit.py \
  --dataset_name data/fashion-mnist --image_preprocessing pad --resolution 32 --image_channels 1 --random_flip \
  --preset MPDiT-tiny \
  --model_config '{"num_attention_heads": 4, "attention_head_dim": 32, "depths": [6, 2], "num_class_tokens": 16, "fno_width": 32, "fno_modes": 16, "fno_grid_size": 32}' \
  --train_batch_size 64 --learning_rate 1e-3 --ema_decay 0.999 --max_train_steps 2500 \
  --checkpointing_steps 250 --checkpoints_total_limit 2 --validation_steps 500 --validation_inference_steps 25 \
  --validation_classes 0,1,2,3,4,5,6,7,8,9 --report_to tensorboard --seed 0 --output_dir out/mpdit-fashion-mnist
# Stages 2 to 4 draw flow times uniformly: small times weigh more than under the logit-normal ones, and that is where
# the residual background speckle of stage 1 is decided.
DATA=(--dataset_name data/fashion-mnist --image_preprocessing pad --resolution 32 --image_channels 1 --random_flip)
LOGGING=(
  --checkpointing_steps 250 --checkpoints_total_limit 2 --validation_steps 500 --validation_inference_steps 25
  --validation_classes 0,1,2,3,4,5,6,7,8,9 --report_to tensorboard
)
# Stage 2, first 1,500 steps at a constant 5e-4 ...
STAGE2=(
  "${DATA[@]}" "${LOGGING[@]}" --pretrained_model_name_or_path out/mpdit-fashion-mnist --weighting_scheme uniform
  --train_batch_size 64 --learning_rate 5e-4 --ema_decay 0.999 --seed 1 --output_dir out/mpdit-fashion-mnist-2
)
python examples/train_mpdit.py "${STAGE2[@]}" --max_train_steps 1500
# ... then resumed with a linear schedule over 2,300 steps: the rate drops to 1.7e-4 at step 1,500 and reaches 0.
python examples/train_mpdit.py "${STAGE2[@]}" --max_train_steps 2300 --lr_scheduler linear --resume_from_checkpoint latest
# Stage 3: a warm restart from stage 2, one linear decay over 3,200 steps.
python examples/train_mpdit.py "${DATA[@]}" "${LOGGING[@]}" \
  --pretrained_model_name_or_path out/mpdit-fashion-mnist-2 --weighting_scheme uniform \
  --train_batch_size 64 --learning_rate 3e-4 --lr_scheduler linear --lr_warmup_steps 100 --ema_decay 0.999 \
  --max_train_steps 3200 --validation_steps 1000 --seed 2 --output_dir out/mpdit-fashion-mnist-3
# Stage 4, on one H200 GPU (torch 2.11, CUDA 13): a warm restart from stage 3 with four times the batch; 3,000 steps took
# 1 minute 55 seconds (26 steps/s).
python examples/train_mpdit.py "${DATA[@]}" \
  --pretrained_model_name_or_path out/mpdit-fashion-mnist-3 --weighting_scheme uniform \
  --train_batch_size 256 --learning_rate 3e-4 --lr_scheduler linear --lr_warmup_steps 200 --ema_decay 0.9995 \
  --max_train_steps 3000 --allow_tf32 --dataloader_num_workers 6 \
  --report_to none --validation_steps 0 --validation_inference_steps 25 --validation_classes 0,1,2,3,4,5,6,7,8,9 \
  --checkpointing_steps 1000000 --seed 3 --output_dir out/mpdit-fashion-mnist-4
# Stage 5, on the 2-core CPU: stages 1 to 4 flipped images at random, but Fashion-MNIST's shoes point left, so
# the model also drew shoes pointing right. The same recipe without --random_flip; 2,400 steps took 66 minutes.
python examples/train_mpdit.py --dataset_name data/fashion-mnist --image_preprocessing pad --resolution 32 \
  --image_channels 1 --checkpointing_steps 250 --checkpoints_total_limit 2 --validation_steps 0 \
  --validation_inference_steps 25 --validation_classes 0,1,2,3,4,5,6,7,8,9 --report_to none \
  --pretrained_model_name_or_path out/mpdit-fashion-mnist-4 --weighting_scheme uniform \
  --train_batch_size 64 --learning_rate 2e-4 --lr_scheduler linear --lr_warmup_steps 100 --ema_decay 0.999 \
  --max_train_steps 2400 --seed 5 --output_dir out/mpdit-fashion-mnist-5
# Stage 6, on one H200 GPU (torch 2.11, CUDA 13): a warm restart from stage 5, again without flips, with four times the
# batch: 2,412 steps of a linear schedule laid out over 3,000, ending at a rate of 4.2e-5 (2 minutes, 20 steps/s).
python examples/train_mpdit.py --dataset_name data/fashion-mnist --image_preprocessing pad --resolution 32 \
  --image_channels 1 --pretrained_model_name_or_path out/mpdit-fashion-mnist-5 \
  --weighting_scheme uniform --train_batch_size 256 --learning_rate 2e-4 --lr_scheduler linear \
  --lr_warmup_steps 200 --ema_decay 0.9995 --max_train_steps 2412 --lr_schedule_steps 3000 \
  --allow_tf32 --dataloader_num_workers 6 --report_to none --validation_steps 0 --validation_inference_steps 25 \
  --validation_classes 0,1,2,3,4,5,6,7,8,9 --checkpointing_steps 1000000 --seed 7 --output_dir out/mpdit-fashion-mnist-6
# Last, the guidance it samples best with becomes the pipeline's default (model_index.json): guidance 2.5, only for
# flow times t <= 0.6, found by sampling 500 images per setting and scoring them with benchmarks/benchmark_quality.py's
# classifier (docs/bundled-model.md).
python -c "from diffusers_mpdit import MPDiTPipeline as P; P.from_pretrained('out/mpdit-fashion-mnist-6', \
default_guidance_scale=2.5, default_guidance_interval=(0.0, 0.6)).save_pretrained('out/mpdit-fashion-mnist-6')"
