"""Progress bars for long work (tqdm when installed, silent otherwise)."""


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, description: str, unit: str = "it", enabled: bool = True):
    if not enabled:
        return _Silent()
    try:
        from tqdm import tqdm  # optional: tqdm
    except ImportError:
        return _Silent()
    return tqdm(total=total, desc=description, unit=unit)
