#!/usr/bin/env bash
# Trained on 2 CPU cores in 69 minutes: 2,500 steps of 64 images, AdamW 1e-3, EMA 0.999, seed 0.
# Data: apt-get install dataset-fashion-mnist && python examples/prepare_fashion_mnist.py --output_dir data/fashion-mnist
# The pipeline is written to out/mpdit-fashion-mnist (this folder is a copy of it, without the checkpoints and logs).
python examples/train_mpdit.py \
  --dataset_name data/fashion-mnist --image_preprocessing pad --resolution 32 --image_channels 1 --random_flip \
  --preset MPDiT-tiny \
  --model_config '{"num_attention_heads": 4, "attention_head_dim": 32, "depths": [6, 2], "num_class_tokens": 16, "fno_width": 32, "fno_modes": 16, "fno_grid_size": 32}' \
  --train_batch_size 64 --learning_rate 1e-3 --ema_decay 0.999 --max_train_steps 2500 \
  --checkpointing_steps 250 --checkpoints_total_limit 2 --validation_steps 500 --validation_inference_steps 25 \
  --validation_classes 0,1,2,3,4,5,6,7,8,9 --report_to tensorboard --seed 0 --output_dir out/mpdit-fashion-mnist
