"""LlamaIndex's Pinecone vector store (llama-index-vector-stores-pinecone, Pinecone SDK
9.x) against one Conifer node over TLS, set up as its documentation says: PINECONE_API_KEY
in the environment, `pc.Index(name)`, `PineconeVectorStore(pinecone_index=...)`. The node's
CA reaches the SDK the way `conifer certs trust` says: the bundle it writes, named by
SSL_CERT_FILE (no hand-made bundle, no `ssl_ca_certs`)."""

import os
import shlex
import subprocess

import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters, VectorStoreQuery
from llama_index.vector_stores.pinecone import PineconeVectorStore
from pinecone import Pinecone, ServerlessSpec

from conftest import conifer_bin
from words import DIM, DOCS, embed

INDEX = "llamaindex-docs"

# LlamaIndex's default tokenizer downloads tiktoken's tables; the suite runs offline.
Settings.tokenizer = str.split


class WordEmbedding(BaseEmbedding):
    def _get_text_embedding(self, text):
        return embed(text)

    def _get_query_embedding(self, query):
        return embed(query)

    async def _aget_query_embedding(self, query):
        return embed(query)


@pytest.fixture(scope="module")
def pc(single_node, tmp_path_factory):
    # `conifer certs trust --no-system` prints the environment line for the bundle it wrote.
    bundle = tmp_path_factory.mktemp("trust") / "bundle.pem"
    out = subprocess.run(
        [conifer_bin(), "certs", "trust", "--no-system", "--ca-cert", single_node["ca_cert"],
         "--bundle", str(bundle)], check=True, capture_output=True, text=True).stdout
    assert out.startswith("export SSL_CERT_FILE="), out
    for assignment in shlex.split(out.removeprefix("export ")):
        name, value = assignment.split("=", 1)
        os.environ[name] = value
    os.environ["PINECONE_API_KEY"] = single_node["api_key"]
    os.environ["PINECONE_CONTROLLER_HOST"] = single_node["api_url"]
    pc = Pinecone()
    pc.create_index(name=INDEX, dimension=DIM, metric="cosine",
                    spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    return pc


@pytest.fixture(scope="module")
def store(pc):
    vs = PineconeVectorStore(pinecone_index=pc.Index(INDEX))
    nodes = [TextNode(id_=i, text=t, metadata=m, embedding=embed(t)) for i, t, m in DOCS]
    assert vs.add(nodes) == [d[0] for d in DOCS]
    return vs


def query(store, text, k=4, filters=None):
    result = store.query(VectorStoreQuery(query_embedding=embed(text), similarity_top_k=k, filters=filters))
    return [n.node_id for n in result.nodes], result.similarities


def test_query(store):
    ids, scores = query(store, "which orchard grows pears")
    assert ids[0] == "apple"
    assert scores == sorted(scores, reverse=True)


def test_query_with_filters(store):
    fruit = MetadataFilters(filters=[MetadataFilter(key="topic", value="fruit")])
    ids, _ = query(store, "a leader replicates the log", filters=fruit)
    assert sorted(ids) == ["apple", "banana"]


def test_delete_by_id_and_by_filter(store):
    store.delete_nodes(node_ids=["banana"])
    ids, _ = query(store, "bananas ripen yellow")
    assert "banana" not in ids and len(ids) == 3
    code = MetadataFilters(filters=[MetadataFilter(key="topic", value="code")])
    store.delete_nodes(filters=code)
    ids, _ = query(store, "rust raft leader")
    assert ids == ["apple"]


def test_vector_store_index_from_documents(pc):
    vs = PineconeVectorStore(pinecone_index=pc.Index(INDEX), namespace="docs")
    index = VectorStoreIndex.from_documents(
        [Document(text=t, id_=i, metadata=m) for i, t, m in DOCS],
        storage_context=StorageContext.from_defaults(vector_store=vs),
        embed_model=WordEmbedding(),
    )
    hits = index.as_retriever(similarity_top_k=1).retrieve("a leader replicates the log")
    assert hits[0].node.ref_doc_id == "raft"
    # Deleting a document deletes its nodes (by the doc_id filter).
    vs.delete("raft")
    hits = index.as_retriever(similarity_top_k=4).retrieve("a leader replicates the log")
    assert "raft" not in [h.node.ref_doc_id for h in hits] and len(hits) == 3
