"""LangChain's Pinecone integration (langchain-pinecone, Pinecone SDK 7.x) against one
Conifer node, set up as its documentation says: PINECONE_API_KEY in the environment, the
index by `index_name`, sync and async calls. SDK 7.x trusts only certifi's CA bundle, so
the node runs with `--dev-http` (plain HTTP on loopback, like Pinecone Local); the
SDK's own PINECONE_CONTROLLER_HOST points it at the node."""

import asyncio
import os

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from pinecone import Pinecone, ServerlessSpec

from langchain_pinecone import PineconeVectorStore
from words import DIM, DOCS, embed

NODE_FLAGS = ["--dev-http"]
INDEX = "langchain-docs"


class WordEmbeddings(Embeddings):
    def embed_documents(self, texts):
        return [embed(t) for t in texts]

    def embed_query(self, text):
        return embed(text)


@pytest.fixture(scope="module")
def store(single_node):
    assert single_node["api_url"].startswith("http://127.0.0.1:")
    os.environ["PINECONE_API_KEY"] = single_node["api_key"]
    os.environ["PINECONE_CONTROLLER_HOST"] = single_node["api_url"]
    pc = Pinecone()
    pc.create_index(name=INDEX, dimension=DIM, metric="cosine",
                    spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    assert pc.describe_index(INDEX).host.startswith("http://127.0.0.1:")
    vs = PineconeVectorStore(index_name=INDEX, embedding=WordEmbeddings())
    ids = vs.add_texts([d[1] for d in DOCS], metadatas=[d[2] for d in DOCS], ids=[d[0] for d in DOCS])
    assert ids == [d[0] for d in DOCS]
    return vs


def ids_of(docs):
    return [d.id for d in docs]


def test_similarity_search(store):
    hits = store.similarity_search("which orchard grows pears", k=2)
    assert hits[0].id == "apple"
    assert hits[0].page_content == DOCS[0][1]
    assert hits[0].metadata == {"topic": "fruit"}
    scored = store.similarity_search_with_score("a leader replicates the log", k=4)
    assert scored[0][0].id == "raft"
    scores = [s for _, s in scored]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1.0001


def test_similarity_search_with_filter(store):
    hits = store.similarity_search("a leader replicates the log", k=4, filter={"topic": "fruit"})
    assert sorted(ids_of(hits)) == ["apple", "banana"]
    hits = store.similarity_search("anything", k=4, filter={"topic": {"$eq": "none"}})
    assert hits == []


def test_max_marginal_relevance(store):
    # langchain-pinecone's MMR returns documents without ids: compare their texts.
    hits = store.max_marginal_relevance_search("rust compiles safe code", k=2, fetch_k=4)
    assert hits[0].page_content == DOCS[2][1]
    assert len({h.page_content for h in hits}) == 2


def test_retriever(store):
    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert ids_of(retriever.invoke("bananas in the sun")) == ["banana"]


def test_async_add_and_search(store):
    async def go():
        ids = await store.aadd_texts(["kiwis are small and green fruit"], metadatas=[{"topic": "fruit"}],
                                     ids=["kiwi"])
        assert ids == ["kiwi"]
        hits = await store.asimilarity_search("small green kiwis", k=1, filter={"topic": "fruit"})
        return ids_of(hits)

    assert asyncio.run(go()) == ["kiwi"]


def test_delete(store):
    store.delete(ids=["kiwi"])
    hits = store.similarity_search("small green kiwis", k=5)
    assert "kiwi" not in ids_of(hits)
    assert len(hits) == 4


def test_from_texts_in_a_namespace(store):
    vs = PineconeVectorStore.from_texts(
        ["raft elects a leader"], WordEmbeddings(), ids=["r1"], index_name=INDEX, namespace="other")
    assert ids_of(vs.similarity_search("leader", k=3)) == ["r1"]
    # The default namespace is untouched.
    assert "r1" not in ids_of(store.similarity_search("raft elects a leader", k=5))
    docs = [Document(page_content="pears are sweet", metadata={"topic": "fruit"}, id="pear")]
    assert vs.add_documents(docs) == ["pear"]
