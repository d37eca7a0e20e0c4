//! [`Module`] for [`PretrainModel`], written out so that the enum backbone keeps the
//! parameter paths and the record layout of the checkpoints written when the model held one
//! `Option` per architecture: paths `unimo.…` / `vilbert.…` / `heads.…` (the safetensors
//! names are derived from them) and a record with the fields `unimo`, `vilbert` (exactly one
//! present) and `heads`. burn's derive would instead name the variant (`backbone.Unimo.…`)
//! and write an enum record, which old checkpoints do not match.

use burn::module::{
    AutodiffModule, Devices, HasAutodiffModule, Module, ModuleMapper, ModuleVisitor,
};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use super::{Backbone, PretrainModel};
use crate::heads::Heads;
use crate::unimo::UnimoBackbone;
use crate::vilbert::VilbertBackbone;

/// The container type the derive would report for the fields of `PretrainModel`.
const CONTAINER: &str = "Struct:PretrainModel";

/// The record of a [`PretrainModel`]: one optional backbone per architecture (exactly one
/// present) and the heads, as checkpoints have always stored it.
#[derive(Record)]
pub struct PretrainModelRecord<B: Backend> {
    /// UNIMO's backbone, for a UNIMO model.
    pub unimo: Option<<UnimoBackbone<B> as Module<B>>::Record>,
    /// ViLBERT's backbone, for a ViLBERT model.
    pub vilbert: Option<<VilbertBackbone<B> as Module<B>>::Record>,
    /// The heads.
    pub heads: <Heads<B> as Module<B>>::Record,
}

impl<B: Backend> Module<B> for PretrainModel<B> {
    type Record = PretrainModelRecord<B>;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        let devices = self.backbone.collect_devices(devices);
        self.heads.collect_devices(devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        Self {
            backbone: self.backbone.fork(device),
            heads: self.heads.fork(device),
            config: self.config,
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            backbone: self.backbone.to_device(device),
            heads: self.heads.to_device(device),
            config: self.config,
        }
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        // Both backbone fields are entered, the absent one empty, as the derive did.
        visitor.enter_module("unimo", CONTAINER);
        if let Backbone::Unimo(m) = &self.backbone {
            m.visit(visitor);
        }
        visitor.exit_module("unimo", CONTAINER);
        visitor.enter_module("vilbert", CONTAINER);
        if let Backbone::Vilbert(m) = &self.backbone {
            m.visit(visitor);
        }
        visitor.exit_module("vilbert", CONTAINER);
        visitor.enter_module("heads", CONTAINER);
        self.heads.visit(visitor);
        visitor.exit_module("heads", CONTAINER);
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        mapper.enter_module("unimo", CONTAINER);
        let backbone = match self.backbone {
            Backbone::Unimo(m) => Backbone::Unimo(m.map(mapper)),
            other => other,
        };
        mapper.exit_module("unimo", CONTAINER);
        mapper.enter_module("vilbert", CONTAINER);
        let backbone = match backbone {
            Backbone::Vilbert(m) => Backbone::Vilbert(m.map(mapper)),
            other => other,
        };
        mapper.exit_module("vilbert", CONTAINER);
        mapper.enter_module("heads", CONTAINER);
        let heads = self.heads.map(mapper);
        mapper.exit_module("heads", CONTAINER);
        Self {
            backbone,
            heads,
            config: self.config,
        }
    }

    /// # Panics
    /// When the record holds no backbone of this model's architecture (a record of the
    /// other architecture; [`crate::Trainer::load`] builds the model from the state's own
    /// configuration, so it never does that).
    fn load_record(self, record: Self::Record) -> Self {
        let backbone = match (self.backbone, record.unimo, record.vilbert) {
            (Backbone::Unimo(m), Some(r), _) => Backbone::Unimo(m.load_record(r)),
            (Backbone::Vilbert(m), _, Some(r)) => Backbone::Vilbert(m.load_record(r)),
            (b, _, _) => panic!("the record holds no {} backbone", b.arch().as_str()),
        };
        Self {
            backbone,
            heads: self.heads.load_record(record.heads),
            config: self.config,
        }
    }

    fn into_record(self) -> Self::Record {
        let (unimo, vilbert) = match self.backbone {
            Backbone::Unimo(m) => (Some(m.into_record()), None),
            Backbone::Vilbert(m) => (None, Some(m.into_record())),
        };
        PretrainModelRecord {
            unimo,
            vilbert,
            heads: self.heads.into_record(),
        }
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for PretrainModel<B> {
    type InnerModule = PretrainModel<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        PretrainModel {
            backbone: self.backbone.valid(),
            heads: self.heads.valid(),
            config: self.config.clone(),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Self {
            backbone: Backbone::from_inner(module.backbone),
            heads: Heads::from_inner(module.heads),
            config: module.config,
        }
    }
}

impl<B: AutodiffBackend> HasAutodiffModule<B> for PretrainModel<B::InnerBackend> {
    type TrainModule = PretrainModel<B>;
}
