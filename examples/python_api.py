"""secure_afl from Python: run a federation, save its model, load it and predict (README "Python API").

    python examples/python_api.py [OUTPUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import secure_afl


def main(out: Path) -> float:
    # A small job: the shipped digits data, 10 clients, masked aggregation (the default protocol).
    result = secure_afl.run(dataset="digits", resolution=32, clients=10, algorithm="afl")
    metrics = result.results["metrics"]
    print(f"accuracy {metrics['accuracy']:.4f}, centralized {metrics['centralized_accuracy']:.4f}")

    path = result.model.save(out / "digits-afl.npz")  # JSON manifest + arrays in one .npz, no pickle
    model = secure_afl.Model.load(path)

    # The test split through the same backbone and feature map: the run's own test accuracy, exactly.
    features, labels = model.dataset_features("digits", "test")
    accuracy = model.score(features, labels)
    assert accuracy == metrics["accuracy"]
    print("first predictions:", model.predict(features[:10]).tolist(), "labels:", labels[:10].tolist())
    return accuracy


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()))
