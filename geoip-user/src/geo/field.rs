//! A record field that databases spell either as a map or as plain text:
//! MaxMind's `{"iso_code": "DE", "names": {...}}` beside IPinfo's
//! `"country": "Germany"`, MaxMind's `{"names": {"en": "Berlin"}}` beside
//! ip-location-db's `"city": "Berlin"`.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor, value::MapAccessDeserializer},
};

/// A field decoded as the map `M`, or its text.
pub(super) enum MapOrText<'a, M> {
    Map(M),
    /// The text, borrowed from the database; `None` when it cannot be.
    Text(Option<&'a str>),
}

impl<'de: 'a, 'a, M: Deserialize<'de>> Deserialize<'de> for MapOrText<'a, M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<'a, M>(PhantomData<(&'a (), M)>);

        impl<'de: 'a, 'a, M: Deserialize<'de>> Visitor<'de> for FieldVisitor<'a, M> {
            type Value = MapOrText<'a, M>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map or a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(MapOrText::Text(Some(text)))
            }

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MapOrText::Text(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                M::deserialize(MapAccessDeserializer::new(map)).map(MapOrText::Map)
            }
        }

        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}
