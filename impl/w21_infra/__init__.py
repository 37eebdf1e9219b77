"""w21 — multi-node training in containers: the suite in a Docker image, a two-host DeepSpeed ZeRO-2 run of the
w05 GPT, faults (a host killed, a resume from the last checkpoint), and cluster manifests.

    python -m impl deploy render --profile multinode    # TrainJob, Indexed Job + headless Service, hostfile, commands
    python -m impl deploy build --profile cpu           # the CPU image (impl/w21_infra/images.py)
    python -m impl deploy run --profile cpu             # two network namespaces as two hosts, ZeRO-2 over gloo
"""
