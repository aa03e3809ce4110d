from vlafoundry.train.sampler import ResumableBatchSampler
from vlafoundry.train.trainer import lr_factor
from vlafoundry.train.config import OptimConfig


def test_ranks_partition_the_global_batch():
    one = ResumableBatchSampler(100, 8, seed=3)
    r0 = ResumableBatchSampler(100, 8, seed=3, rank=0, world_size=2)
    r1 = ResumableBatchSampler(100, 8, seed=3, rank=1, world_size=2)
    for _ in range(30):  # crosses epoch boundaries
        assert one.next_batch() == r0.next_batch() + r1.next_batch()


def test_resume_reproduces_order():
    a = ResumableBatchSampler(50, 7, seed=1)
    for _ in range(9):
        a.next_batch()
    b = ResumableBatchSampler(50, 7, seed=1)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(20)] == [b.next_batch() for _ in range(20)]


def test_epoch_covers_each_sample_once():
    s = ResumableBatchSampler(40, 8, seed=0)
    seen = sum((s.next_batch() for _ in range(5)), [])
    assert sorted(seen) == list(range(40))


def test_lr_schedule_warmup_and_cosine():
    opt = OptimConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, opt) == 0.1
    assert lr_factor(9, opt) == 1.0
    assert abs(lr_factor(10, opt) - 1.0) < 1e-9
    assert abs(lr_factor(55, opt) - (0.1 + 0.9 * 0.5)) < 1e-9
    assert abs(lr_factor(100, opt) - 0.1) < 1e-9
