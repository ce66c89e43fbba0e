"""The network derived from a genotype, trained from scratch (batch norm affine, drop-path on CNN ops)."""
from torch import Tensor, nn

from emodarts.model.backbone import (
    FeatureNorm,
    Head,
    SequenceHandoff,
    cnn_cell_plan,
    stem,
)
from emodarts.model.cells.cnn import FixedCnnCell
from emodarts.model.cells.darts import FixedDartsCell
from emodarts.model.cells.seq import FixedSeqCell
from emodarts.model.config import ModelConfig
from emodarts.model.dropout import BatchDropout
from emodarts.model.space import Genotype, check_genotype_fits


class AuxiliaryHead(nn.Module):
    """DARTS's auxiliary classifier (AuxiliaryHeadCIFAR), read from the CNN map after the cell at 2/3 of the
    depth (the second reduction cell): ReLU, average pooling, conv 1x1 -> 128, BN, ReLU, conv 2x2 -> 768, BN,
    ReLU, linear. DARTS pools its 8x8 map with a 5x5 window at stride 3, which gives 2x2; ours pools any map
    (any height and width >= 1; 5 x 12 in `tiny`, 32 x 32 in `paper`) adaptively to that same 2x2."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


AUX_PREFIX = "aux_head."


def has_auxiliary_head(state_dict) -> bool:
    """Whether a DerivedNetwork state dict holds an auxiliary head (runs with --aux-weight 0, or of older
    versions, hold none)."""
    return any(k.startswith(AUX_PREFIX) for k in state_dict)


class DerivedNetwork(nn.Module):
    """forward(x) gives the logits (evaluation, predict and training alike); forward_with_aux(x) also the
    auxiliary head's logits, in training mode only: the head never touches evaluation or prediction."""

    def __init__(self, cfg: ModelConfig, genotype: Genotype, n_features: int, n_classes: int,
                 auxiliary: bool = False):
        super().__init__()
        check_genotype_fits(genotype, cfg)
        self.cfg = cfg
        self.norm = FeatureNorm(n_features)
        self.stem = stem(cfg, affine=True)
        plan = cnn_cell_plan(cfg)
        self.cnn_cells = nn.ModuleList(
            FixedCnnCell(genotype.reduce if p.reduction else genotype.normal, p) for p in plan
        )
        self.cell_dropout = BatchDropout(cfg.dropout)
        last = plan[-1]
        self.handoff = SequenceHandoff(last.c_p, cfg.cnn_nodes * last.c, cfg.hidden)
        seq_cell = FixedDartsCell if cfg.seq_space == "darts" else FixedSeqCell
        self.seq_cells = nn.ModuleList(seq_cell(genotype.seq, cfg.hidden, cfg.dropout) for _ in range(cfg.seq_cells))
        self.head = Head(cfg.hidden, n_classes, cfg.dropout)
        self.aux_index = 2 * cfg.cnn_layers // 3  # DARTS: after the cell at 2/3 of the depth
        a = plan[self.aux_index]
        self.aux_head = AuxiliaryHead(cfg.cnn_nodes * a.c, n_classes) if auxiliary else None

    def set_drop_path(self, prob: float) -> None:
        for cell in self.cnn_cells:
            cell.drop_path_prob = prob

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x, False)[0]

    def forward_with_aux(self, x: Tensor):
        """(logits, auxiliary logits); the latter None without a head or outside training mode."""
        return self._forward(x, self.aux_head is not None and self.training)

    def _forward(self, x: Tensor, with_aux: bool):
        aux = None
        s0 = s1 = self.stem(self.norm(x))
        for i, cell in enumerate(self.cnn_cells):
            s0, s1 = s1, self.cell_dropout(cell(s0, s1))
            if with_aux and i == self.aux_index:
                aux = self.aux_head(s1)
        q0, q1 = self.handoff(s0, s1)
        for cell in self.seq_cells:
            q0, q1 = q1, cell(q0, q1)
        return self.head(q1), aux
