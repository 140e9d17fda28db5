"""Training a pruned model: fine-tuning (`finetune`) and its multi-process set-up (`distributed`)."""
