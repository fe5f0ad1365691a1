"""What training code imports: token datasets, torch and HF wrappers, Megatron's reader."""
